"""Accounts that make plans move real money on the local cluster.

A "swap" here is two real SPL Token transfers signed by the wallet alone: it pays token
A into the pool's vault and takes token B out of a vault that has approved the wallet
as delegate. Balances really change, and an unfunded or over-sized swap really fails
on-chain (the token program's InsufficientFunds), so actual profit can be measured.

Fixtures are written straight into the ledger's accounts, as a genesis would be.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from solders.account import Account
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.token.associated import get_associated_token_address
from solders.token.state import Mint, TokenAccount, TokenAccountState

from venue.instructions import TokenInstruction
from venue.programs import TOKEN_PROGRAM

from .ledger import Ledger

MINT_LEN = 82
TOKEN_ACCOUNT_LEN = 165
# spl-token instruction tags (token/program/src/instruction.rs)


def _rent_exempt(ledger: Ledger, size: int) -> int:
    return ledger.svm.minimum_balance_for_rent_exemption(size)


def create_mint(ledger: Ledger, decimals: int = 6, authority: Pubkey | None = None, supply: int = 0) -> Pubkey:
    mint = Keypair().pubkey()
    data = bytes(Mint(mint_authority=authority or Keypair().pubkey(), supply=supply, decimals=decimals, is_initialized=True))
    ledger.svm.set_account(mint, Account(_rent_exempt(ledger, MINT_LEN), data, TOKEN_PROGRAM))
    return mint


def set_token_account(
    ledger: Ledger,
    mint: Pubkey,
    owner: Pubkey,
    amount: int,
    *,
    address: Pubkey | None = None,
    delegate: Pubkey | None = None,
    delegated_amount: int = 0,
) -> Pubkey:
    """Create or overwrite a token account (the owner's associated token account unless `address` is given)."""
    address = address or get_associated_token_address(owner, mint)
    state = TokenAccount(
        mint=mint,
        owner=owner,
        amount=amount,
        delegate=delegate,
        state=TokenAccountState.Initialized,
        is_native=None,
        delegated_amount=delegated_amount if delegate else 0,
    )
    ledger.svm.set_account(address, Account(_rent_exempt(ledger, TOKEN_ACCOUNT_LEN), bytes(state), TOKEN_PROGRAM))
    _bump_supply(ledger, mint, amount)
    return address


def _bump_supply(ledger: Ledger, mint: Pubkey, amount: int) -> None:
    account = ledger.svm.get_account(mint)
    old = Mint.from_bytes(bytes(account.data)[:MINT_LEN])
    new = Mint(old.mint_authority, old.supply + amount, old.decimals, old.is_initialized, old.freeze_authority)
    ledger.svm.set_account(mint, Account(account.lamports, bytes(new), account.owner))


def token_balance(ledger: Ledger, address: Pubkey) -> int:
    account = ledger.svm.get_account(address)
    return TokenAccount.from_bytes(bytes(account.data)[:TOKEN_ACCOUNT_LEN]).amount if account else 0


def transfer_checked(source: Pubkey, mint: Pubkey, destination: Pubkey, authority: Pubkey, amount: int, decimals: int) -> Instruction:
    return Instruction(
        TOKEN_PROGRAM,
        struct.pack("<BQB", TokenInstruction.TRANSFER_CHECKED, amount, decimals),
        [
            AccountMeta(source, is_signer=False, is_writable=True),
            AccountMeta(mint, is_signer=False, is_writable=False),
            AccountMeta(destination, is_signer=False, is_writable=True),
            AccountMeta(authority, is_signer=True, is_writable=False),
        ],
    )


@dataclass
class SwapPool:
    """Two mints and the pool's vaults; each wallet gets an out-vault that has approved it as delegate."""

    mint_in: Pubkey
    mint_out: Pubkey
    decimals: int
    authority: Pubkey
    vault_in: Pubkey
    vaults_out: dict[Pubkey, Pubkey] = field(default_factory=dict)

    def swap_instructions(self, wallet: Pubkey, amount_in: int, amount_out: int) -> list[Instruction]:
        """Pay `amount_in` of mint_in, receive `amount_out` of mint_out; signed by the wallet only."""
        return [
            transfer_checked(get_associated_token_address(wallet, self.mint_in), self.mint_in, self.vault_in, wallet, amount_in, self.decimals),
            transfer_checked(self.vaults_out[wallet], self.mint_out, get_associated_token_address(wallet, self.mint_out), wallet, amount_out, self.decimals),
        ]

    def to_json(self) -> dict:
        return {
            "mintIn": str(self.mint_in),
            "mintOut": str(self.mint_out),
            "decimals": self.decimals,
            "authority": str(self.authority),
            "vaultIn": str(self.vault_in),
            "vaultsOut": {str(w): str(v) for w, v in self.vaults_out.items()},
        }


def create_swap_pool(
    ledger: Ledger,
    wallets: list[Pubkey],
    *,
    decimals: int = 6,
    wallet_balance: int = 1_000_000_000_000,
    liquidity: int = 1_000_000_000_000,
) -> SwapPool:
    """Mints A and B; each wallet holds `wallet_balance` of A and an empty B account; the pool holds `liquidity` of B per wallet."""
    authority = Keypair().pubkey()
    mint_in = create_mint(ledger, decimals)
    mint_out = create_mint(ledger, decimals)
    vault_in = set_token_account(ledger, mint_in, authority, 0)
    pool = SwapPool(mint_in, mint_out, decimals, authority, vault_in)
    ledger.pool_accounts.append(vault_in)  # every wallet's swap write-locks it: the pool's contested account
    for wallet in wallets:
        set_token_account(ledger, mint_in, wallet, wallet_balance)
        set_token_account(ledger, mint_out, wallet, 0)
        pool.vaults_out[wallet] = set_token_account(
            ledger, mint_out, authority, liquidity, address=Keypair().pubkey(), delegate=wallet, delegated_amount=liquidity
        )
    return pool
