"""Kamino Lending (klend) flash-loan instructions, byte-exact, plus reserve decoding.

Sources (checked against Kamino-Finance/klend @ edd5ff509af3, 2026-03-23, and
Kamino-Finance/klend-sdk @ cf46535690930, 2026-03-13, package 7.3.20):

- Program id: klend programs/klend/src/lib.rs (`declare_id!("KLend2g3cP87fffoy8q1mQqGKjrxjC8boSyAYavgmjD")`,
  the mainnet id; the staging build uses SLendK7ySfcEzyaFqy93gDnD3RtrpXJcnRwb6zFHJSh).
- Instruction names and arguments: klend programs/klend/src/lib.rs
  (`flash_borrow_reserve_liquidity(liquidity_amount: u64)`,
  `flash_repay_reserve_liquidity(liquidity_amount: u64, borrow_instruction_index: u8)`).
  Discriminators sha256("global:<name>")[:8] equal the ones hard-coded in klend-sdk
  src/@codegen/klend/instructions/flashBorrowReserveLiquidity.ts ([135,231,52,167,7,52,212,193])
  and flashRepayReserveLiquidity.ts ([185,117,0,203,96,245,180,186]).
- Account order and flags: the `#[derive(Accounts)]` structs in klend
  programs/klend/src/handlers/handler_flash_borrow_reserve_liquidity.rs and
  handler_flash_repay_reserve_liquidity.rs, identical to klend-sdk src/idl/klend.json (IDL 1.13.0)
  and the codegen files above (absent optional account -> `{ address: programAddress, role: 0 }`,
  i.e. the klend program id, read-only; userTransferAuthority role 2 = read-only signer).
- Lending market authority PDA: klend programs/klend/src/utils/seeds.rs
  (`LENDING_MARKET_AUTH = b"lma"`, `pda::lending_market_auth`: seeds [b"lma", market]).
- Reserve layout: klend programs/klend/src/state/reserve.rs (`Reserve`, `ReserveLiquidity`,
  `ReserveConfig`, `ReserveFees`), programs/klend/src/utils/consts.rs (`RESERVE_SIZE = 8616`,
  + 8-byte Anchor discriminator = 8624), field offsets counted from klend-sdk src/idl/klend.json
  (see RESERVE_* offsets below).
- Fee: klend reserve.rs `ReserveFees::calculate_flash_loan_fees` / `calculate_fees`
  (Fraction = U68F60, programs/klend/src/utils/fraction.rs): fee_f = max(amount * fee_sf / 2^60, 1),
  error BorrowTooSmall if fee_f >= amount, fee = fee_f.to_round() (round half up), and no fee at all
  when fee_sf == 0. Flash loans disabled when flash_loan_fee_sf == u64::MAX
  (lending_checks.rs `flash_borrow_reserve_liquidity_checks`, lending_operations.rs
  `flash_borrow_reserve_liquidity`).
- Pairing rules (lending_market/flash_ixs.rs): borrow and repay top level (no CPI), one borrow per
  transaction, the repay carries the same amount, `borrow_instruction_index` equal to the borrow's
  absolute index in the transaction, and exactly the same account list as the borrow.
"""
from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from dataclasses import dataclass

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.sysvar import INSTRUCTIONS

from .rpc import SolanaRpc

# programs/klend/src/lib.rs declare_id! (mainnet)
KLEND_PROGRAM_ID: Pubkey = Pubkey.from_string("KLend2g3cP87fffoy8q1mQqGKjrxjC8boSyAYavgmjD")
# handlers: `#[account(address = sysvar::instructions::ID)] sysvar_info`
INSTRUCTIONS_SYSVAR: Pubkey = INSTRUCTIONS
KAMINO_MAIN_MARKET: Pubkey = Pubkey.from_string("7u3HeHxYDLhnCoErrtycNokbQYbWGzLs6JSDqGAv5PfF")

FLASH_BORROW = "flash_borrow_reserve_liquidity"
FLASH_REPAY = "flash_repay_reserve_liquidity"

# programs/klend/src/utils/seeds.rs LENDING_MARKET_AUTH
LENDING_MARKET_AUTH_SEED = b"lma"

U64_MAX = 2**64 - 1
FRACTION_ONE = 1 << 60  # U68F60: 60 fractional bits (utils/fraction.rs)


def discriminator(name: str) -> bytes:
    """Anchor instruction discriminator: sha256("global:" + snake_case name)[:8]."""
    return hashlib.sha256(b"global:" + name.encode()).digest()[:8]


def account_discriminator(name: str) -> bytes:
    """Anchor account discriminator: sha256("account:" + AccountName)[:8]."""
    return hashlib.sha256(b"account:" + name.encode()).digest()[:8]


INSTRUCTION_NAMES: dict[bytes, str] = {discriminator(n): n for n in (FLASH_BORROW, FLASH_REPAY)}

# --- Reserve account layout -------------------------------------------------------------------
# utils/consts.rs RESERVE_SIZE = 8616 (size_of::<Reserve>()), plus the 8-byte discriminator.
RESERVE_SIZE = 8 + 8616
RESERVE_DISCRIMINATOR = account_discriminator("Reserve")  # [43,242,204,202,26,247,59,127]
# Offsets from the start of the account data (discriminator included), counted field by field
# from klend-sdk src/idl/klend.json `Reserve` (same order as state/reserve.rs):
#   8 version u64 | 16 lastUpdate (slot u64, stale u8, priceStatus u8, placeholder [u8;6]) |
#   32 lendingMarket | 64 farmCollateral | 96 farmDebt | 128 liquidity: ReserveLiquidity {
#   128 mintPubkey, 160 supplyVault, 192 feeVault, 224 availableAmount u64,
#   232 borrowedAmountSf u128, 248 marketPriceSf u128, 264 marketPriceLastUpdatedTs u64,
#   272 mintDecimals u64, 280 depositLimitCrossedTimestamp, 288 borrowLimitCrossedTimestamp,
#   296 cumulativeBorrowRateBsf (48), 344/360/376/392 four u128, 408 tokenProgram, ... } (1232) |
#   1360 reserveLiquidityPadding [u64;150] | 2560 collateral (1096) | 3656 padding [u64;150] |
#   4856 config: ReserveConfig { status u8 ... 4880 u64, 4888 u64, 4896 fees: ReserveFees {
#   4896 originationFeeSf u64, 4904 flashLoanFeeSf u64, 4912 padding [u8;8] } ... } (936) | ...
RESERVE_VERSION = 8
RESERVE_LENDING_MARKET = 32
RESERVE_LIQUIDITY_MINT = 128
RESERVE_SUPPLY_VAULT = 160
RESERVE_FEE_VAULT = 192
RESERVE_AVAILABLE_AMOUNT = 224
RESERVE_MINT_DECIMALS = 272
RESERVE_TOKEN_PROGRAM = 408
RESERVE_ORIGINATION_FEE_SF = 4896
RESERVE_FLASH_LOAN_FEE_SF = 4904

# LendingMarket (klend-sdk src/idl/klend.json): 8 version, 16 bumpSeed, 24 owner, 56 ownerCached,
# 88 quoteCurrency [u8;32], 120 referralFeeBps u16, 122 emergencyMode u8.
LENDING_MARKET_EMERGENCY_MODE = 122


class ReserveInvalid(ValueError):
    """The account is not a usable klend reserve."""


@dataclass(frozen=True)
class ReserveInfo:
    address: Pubkey
    lending_market: Pubkey
    liquidity_mint: Pubkey
    supply_vault: Pubkey
    fee_vault: Pubkey  # reserveLiquidityFeeReceiver
    token_program: Pubkey
    mint_decimals: int | None = None
    available_amount: int | None = None
    flash_loan_fee_sf: int | None = None


def _pubkey_at(data: bytes, offset: int) -> Pubkey:
    return Pubkey.from_bytes(data[offset : offset + 32])


def _u64_at(data: bytes, offset: int) -> int:
    return struct.unpack_from("<Q", data, offset)[0]


def decode_reserve(address: Pubkey, owner: Pubkey, data: bytes) -> ReserveInfo:
    """Decode a klend Reserve account; raises ReserveInvalid if it is not one."""
    if owner != KLEND_PROGRAM_ID:
        raise ReserveInvalid(f"reserve {address} is owned by {owner}, not klend {KLEND_PROGRAM_ID}")
    data = bytes(data)
    if len(data) != RESERVE_SIZE:
        raise ReserveInvalid(f"reserve {address} has {len(data)} bytes, a klend Reserve has {RESERVE_SIZE}")
    if data[:8] != RESERVE_DISCRIMINATOR:
        raise ReserveInvalid(f"account {address} is not a klend Reserve (discriminator {data[:8].hex()})")
    return ReserveInfo(
        address=address,
        lending_market=_pubkey_at(data, RESERVE_LENDING_MARKET),
        liquidity_mint=_pubkey_at(data, RESERVE_LIQUIDITY_MINT),
        supply_vault=_pubkey_at(data, RESERVE_SUPPLY_VAULT),
        fee_vault=_pubkey_at(data, RESERVE_FEE_VAULT),
        token_program=_pubkey_at(data, RESERVE_TOKEN_PROGRAM),
        mint_decimals=_u64_at(data, RESERVE_MINT_DECIMALS),
        available_amount=_u64_at(data, RESERVE_AVAILABLE_AMOUNT),
        flash_loan_fee_sf=_u64_at(data, RESERVE_FLASH_LOAN_FEE_SF),
    )


def flash_loans_enabled(reserve: ReserveInfo) -> bool:
    """klend refuses flash borrows (FlashLoansDisabled) when flash_loan_fee_sf == u64::MAX."""
    return reserve.flash_loan_fee_sf is not None and reserve.flash_loan_fee_sf != U64_MAX


def lending_market_authority(market: Pubkey) -> Pubkey:
    """PDA [b"lma", market] under klend (utils/seeds.rs pda::lending_market_auth)."""
    return Pubkey.find_program_address([LENDING_MARKET_AUTH_SEED, bytes(market)], KLEND_PROGRAM_ID)[0]


def flash_loan_fee(amount: int, fee_sf: int) -> int:
    """The fee klend adds on repay (reserve.rs ReserveFees::calculate_fees, Exclusive).

    fee_f = max(amount * fee_sf / 2^60, 1) in U68F60 (the product is exact, amount being an
    integer), then `to_round()` (round half up). No fee when fee_sf == 0 or amount == 0.
    Raises ValueError where klend would fail: flash loans disabled (u64::MAX) or
    BorrowTooSmall (fee_f >= amount).
    """
    if not 0 <= amount <= U64_MAX or not 0 <= fee_sf <= U64_MAX:
        raise ValueError("amount and fee_sf are u64")
    if fee_sf == U64_MAX:
        raise ValueError("flash loans are disabled for this reserve (flash_loan_fee_sf == u64::MAX)")
    if fee_sf == 0 or amount == 0:
        return 0
    fee_bits = max(amount * fee_sf, FRACTION_ONE)  # fraction bits of max(amount * rate, 1)
    if fee_bits >= amount * FRACTION_ONE:
        raise ValueError(f"flash loan of {amount} is too small to pay its fee (klend BorrowTooSmall)")
    return (fee_bits + (FRACTION_ONE >> 1)) >> 60


def _flash_accounts(
    reserve: ReserveInfo,
    user: Pubkey,
    user_token_account: Pubkey,
    referrer_token_state: Pubkey | None,
    referrer_account: Pubkey | None,
) -> list[AccountMeta]:
    """The account list shared by borrow and repay (the handlers' Accounts structs, same order;
    flash_ixs.rs requires the repay's accounts to equal the borrow's)."""

    def optional(key: Pubkey | None) -> AccountMeta:
        if key is None:  # Anchor: an absent Option<...> account is the program id, read-only
            return AccountMeta(KLEND_PROGRAM_ID, is_signer=False, is_writable=False)
        return AccountMeta(key, is_signer=False, is_writable=True)

    return [
        AccountMeta(user, is_signer=True, is_writable=False),  # user_transfer_authority
        AccountMeta(lending_market_authority(reserve.lending_market), is_signer=False, is_writable=False),
        AccountMeta(reserve.lending_market, is_signer=False, is_writable=False),
        AccountMeta(reserve.address, is_signer=False, is_writable=True),  # reserve
        AccountMeta(reserve.liquidity_mint, is_signer=False, is_writable=False),  # reserve_liquidity_mint
        AccountMeta(reserve.supply_vault, is_signer=False, is_writable=True),  # reserve source/destination liquidity
        AccountMeta(user_token_account, is_signer=False, is_writable=True),  # user destination/source liquidity
        AccountMeta(reserve.fee_vault, is_signer=False, is_writable=True),  # reserve_liquidity_fee_receiver
        optional(referrer_token_state),
        optional(referrer_account),
        AccountMeta(INSTRUCTIONS_SYSVAR, is_signer=False, is_writable=False),  # sysvar_info
        AccountMeta(reserve.token_program, is_signer=False, is_writable=False),
    ]


def _u64(value: int, what: str) -> bytes:
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} {value} is not a u64")
    return struct.pack("<Q", value)


def flash_borrow_instruction(
    reserve: ReserveInfo,
    user: Pubkey,
    user_token_account: Pubkey,
    amount: int,
    *,
    referrer_token_state: Pubkey | None = None,
    referrer_account: Pubkey | None = None,
) -> Instruction:
    data = discriminator(FLASH_BORROW) + _u64(amount, "liquidity_amount")
    accounts = _flash_accounts(reserve, user, user_token_account, referrer_token_state, referrer_account)
    return Instruction(KLEND_PROGRAM_ID, data, accounts)


def flash_repay_instruction(
    reserve: ReserveInfo,
    user: Pubkey,
    user_token_account: Pubkey,
    amount: int,
    borrow_instruction_index: int,
    *,
    referrer_token_state: Pubkey | None = None,
    referrer_account: Pubkey | None = None,
) -> Instruction:
    """`borrow_instruction_index` is the borrow's absolute index in the transaction (compute-budget
    and other instructions included); it is a u8."""
    if not 0 <= borrow_instruction_index <= 255:
        raise ValueError(f"borrow_instruction_index {borrow_instruction_index} is not a u8")
    data = (
        discriminator(FLASH_REPAY)
        + _u64(amount, "liquidity_amount")
        + bytes([borrow_instruction_index])
    )
    accounts = _flash_accounts(reserve, user, user_token_account, referrer_token_state, referrer_account)
    return Instruction(KLEND_PROGRAM_ID, data, accounts)


def decode_instruction(ix: Instruction) -> dict | None:
    """{"name", "amount"[, "borrowInstructionIndex"]} for a klend flash borrow/repay, else None."""
    if ix.program_id != KLEND_PROGRAM_ID:
        return None
    data = bytes(ix.data)
    name = INSTRUCTION_NAMES.get(data[:8])
    if name == FLASH_BORROW and len(data) >= 16:
        return {"name": name, "amount": _u64_at(data, 8)}
    if name == FLASH_REPAY and len(data) >= 17:
        return {"name": name, "amount": _u64_at(data, 8), "borrowInstructionIndex": data[16]}
    return None


class ReserveCache:
    """Reserves by address, read with getAccountInfo (base64) and re-read after `ttl_s`."""

    def __init__(self, rpc: SolanaRpc, ttl_s: float = 60.0) -> None:
        self.rpc = rpc
        self.ttl_s = ttl_s
        self.reserves: dict[Pubkey, tuple[ReserveInfo, float]] = {}
        self._locks: dict[Pubkey, asyncio.Lock] = {}

    def _fresh(self, address: Pubkey) -> ReserveInfo | None:
        hit = self.reserves.get(address)
        if hit is not None and time.monotonic() - hit[1] <= self.ttl_s:
            return hit[0]
        return None

    async def get(self, address: Pubkey) -> ReserveInfo:
        cached = self._fresh(address)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:  # one fetch per address at a time
            cached = self._fresh(address)
            if cached is not None:
                return cached
            account = await self.rpc.account_info(address, "confirmed")
            if account is None:
                raise ReserveInvalid(f"reserve {address} does not exist")
            reserve = decode_reserve(address, account.owner, bytes(account.data))
            self.reserves[address] = (reserve, time.monotonic())
            return reserve
