"""The on-chain programs a plan's transaction may touch: their ids, and the associated token
account (the address a wallet's tokens of one mint live at, under Token or Token-2022).

Sources: solana-program-library (token, token-2022, associated-token-account, memo) and
agave's builtins (system, address lookup table).
"""
from __future__ import annotations

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.token.associated import get_associated_token_address

from .instructions import AssociatedTokenAccountInstruction

SYSTEM_PROGRAM = Pubkey.from_string("11111111111111111111111111111111")
TOKEN_PROGRAM = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
TOKEN_2022_PROGRAM = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
TOKEN_PROGRAMS = (TOKEN_PROGRAM, TOKEN_2022_PROGRAM)
ATA_PROGRAM = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
MEMO_PROGRAM = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
MEMO_V1_PROGRAM = Pubkey.from_string("Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo")
LOOKUP_TABLE_PROGRAM = Pubkey.from_string("AddressLookupTab1e1111111111111111111111111")
NATIVE_MINT = Pubkey.from_string("So11111111111111111111111111111111111111112")
CREATE_IDEMPOTENT = bytes([AssociatedTokenAccountInstruction.CREATE_IDEMPOTENT])


def associated_token_address(wallet: Pubkey, mint: Pubkey, token_program: Pubkey = TOKEN_PROGRAM) -> Pubkey:
    """The wallet's token account for `mint`: the PDA of (wallet, token program, mint) under the ATA program."""
    if token_program == TOKEN_PROGRAM:
        return get_associated_token_address(wallet, mint)
    return Pubkey.find_program_address([bytes(wallet), bytes(token_program), bytes(mint)], ATA_PROGRAM)[0]


def create_token_account_idempotent(payer: Pubkey, owner: Pubkey, mint: Pubkey, token_program: Pubkey) -> Instruction:
    """spl-associated-token-account CreateIdempotent: a no-op when the account exists."""
    return Instruction(
        ATA_PROGRAM,
        CREATE_IDEMPOTENT,
        [
            AccountMeta(payer, is_signer=True, is_writable=True),
            AccountMeta(associated_token_address(owner, mint, token_program), is_signer=False, is_writable=True),
            AccountMeta(owner, is_signer=False, is_writable=False),
            AccountMeta(mint, is_signer=False, is_writable=False),
            AccountMeta(SYSTEM_PROGRAM, is_signer=False, is_writable=False),
            AccountMeta(token_program, is_signer=False, is_writable=False),
        ],
    )
