"""klend flash-loan instructions against vectors written out independently of venue/klend.py.

Discriminators come from hashlib here and from klend-sdk's generated code
(src/@codegen/klend/instructions/flashBorrowReserveLiquidity.ts / flashRepayReserveLiquidity.ts);
the account lists are written out in the order of klend's handler Accounts structs / the IDL.
"""
from __future__ import annotations

import hashlib
import struct
from types import SimpleNamespace

import pytest
from solders.instruction import AccountMeta
from solders.pubkey import Pubkey

from venue import klend

KLEND = Pubkey.from_string("KLend2g3cP87fffoy8q1mQqGKjrxjC8boSyAYavgmjD")
IX_SYSVAR = Pubkey.from_string("Sysvar1nstructions1111111111111111111111111")
SPL_TOKEN = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
TOKEN_2022 = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
MAIN_MARKET = Pubkey.from_string("7u3HeHxYDLhnCoErrtycNokbQYbWGzLs6JSDqGAv5PfF")


def fixed(n: int) -> Pubkey:
    return Pubkey.from_bytes(bytes([n]) * 32)


RESERVE = fixed(1)
MARKET = fixed(2)
MINT = fixed(3)
SUPPLY = fixed(4)
FEE_VAULT = fixed(5)
USER = fixed(6)
USER_ATA = fixed(7)
REF_STATE = fixed(8)
REF_ACCOUNT = fixed(9)

INFO = klend.ReserveInfo(
    address=RESERVE,
    lending_market=MARKET,
    liquidity_mint=MINT,
    supply_vault=SUPPLY,
    fee_vault=FEE_VAULT,
    token_program=SPL_TOKEN,
    mint_decimals=9,
    available_amount=10**15,
    flash_loan_fee_sf=0,
)

BORROW_DISC = hashlib.sha256(b"global:flash_borrow_reserve_liquidity").digest()[:8]
REPAY_DISC = hashlib.sha256(b"global:flash_repay_reserve_liquidity").digest()[:8]
AMOUNT = 20_000_000_000  # 20 SOL in lamports


def lma(market: Pubkey) -> Pubkey:
    return Pubkey.find_program_address([b"lma", bytes(market)], KLEND)[0]


def expected_accounts(ref_state: Pubkey | None = None, ref_account: Pubkey | None = None):
    """(pubkey, is_signer, is_writable) in IDL order."""
    return [
        (USER, True, False),  # userTransferAuthority
        (lma(MARKET), False, False),  # lendingMarketAuthority
        (MARKET, False, False),  # lendingMarket
        (RESERVE, False, True),  # reserve
        (MINT, False, False),  # reserveLiquidityMint
        (SUPPLY, False, True),  # reserveSource/DestinationLiquidity
        (USER_ATA, False, True),  # userDestination/SourceLiquidity
        (FEE_VAULT, False, True),  # reserveLiquidityFeeReceiver
        (ref_state, False, True) if ref_state else (KLEND, False, False),  # referrerTokenState
        (ref_account, False, True) if ref_account else (KLEND, False, False),  # referrerAccount
        (IX_SYSVAR, False, False),  # sysvarInfo
        (SPL_TOKEN, False, False),  # tokenProgram
    ]


def metas(ix):
    return [(m.pubkey, m.is_signer, m.is_writable) for m in ix.accounts]


def test_discriminators_match_sdk_codegen():
    assert BORROW_DISC == bytes([135, 231, 52, 167, 7, 52, 212, 193])
    assert REPAY_DISC == bytes([185, 117, 0, 203, 96, 245, 180, 186])
    assert klend.discriminator(klend.FLASH_BORROW) == BORROW_DISC
    assert klend.discriminator(klend.FLASH_REPAY) == REPAY_DISC
    assert klend.INSTRUCTION_NAMES == {BORROW_DISC: klend.FLASH_BORROW, REPAY_DISC: klend.FLASH_REPAY}
    assert klend.KLEND_PROGRAM_ID == KLEND
    assert klend.INSTRUCTIONS_SYSVAR == IX_SYSVAR


def test_flash_borrow_bytes():
    ix = klend.flash_borrow_instruction(INFO, USER, USER_ATA, AMOUNT)
    assert ix.program_id == KLEND
    # 20_000_000_000 = 0x04_A8_17_C8_00
    assert bytes(ix.data) == BORROW_DISC + bytes([0x00, 0xC8, 0x17, 0xA8, 0x04, 0, 0, 0])
    assert metas(ix) == expected_accounts()
    assert ix.accounts[0] == AccountMeta(USER, is_signer=True, is_writable=False)


def test_flash_repay_bytes():
    ix = klend.flash_repay_instruction(INFO, USER, USER_ATA, AMOUNT, 3)
    assert ix.program_id == KLEND
    assert bytes(ix.data) == REPAY_DISC + bytes([0x00, 0xC8, 0x17, 0xA8, 0x04, 0, 0, 0]) + bytes([3])
    assert len(ix.data) == 17
    assert metas(ix) == expected_accounts()


def test_borrow_and_repay_share_accounts_with_referrer_and_token_2022():
    info = klend.ReserveInfo(RESERVE, MARKET, MINT, SUPPLY, FEE_VAULT, TOKEN_2022, 6, 1, 2)
    kw = dict(referrer_token_state=REF_STATE, referrer_account=REF_ACCOUNT)
    borrow = klend.flash_borrow_instruction(info, USER, USER_ATA, 5, **kw)
    repay = klend.flash_repay_instruction(info, USER, USER_ATA, 5, 0, **kw)
    want = expected_accounts(REF_STATE, REF_ACCOUNT)
    want[-1] = (TOKEN_2022, False, False)
    assert metas(borrow) == want
    assert metas(repay) == want  # flash_ixs.rs: the repay's accounts must equal the borrow's


def test_instruction_argument_ranges():
    with pytest.raises(ValueError):
        klend.flash_borrow_instruction(INFO, USER, USER_ATA, 2**64)
    with pytest.raises(ValueError):
        klend.flash_repay_instruction(INFO, USER, USER_ATA, 1, 256)
    with pytest.raises(ValueError):
        klend.flash_repay_instruction(INFO, USER, USER_ATA, -1, 0)


def test_lending_market_authority():
    assert klend.lending_market_authority(MARKET) == lma(MARKET)
    assert klend.lending_market_authority(MAIN_MARKET) == lma(MAIN_MARKET)
    # The main market's authority as published in other public code (not found in klend/klend-sdk).
    assert klend.lending_market_authority(MAIN_MARKET) == Pubkey.from_string(
        "9DrvZvyWh1HuAoZxvYWMvkf2XCzryCpGgHqrMjyDWpmo"
    )


def reserve_bytes(**overrides) -> bytearray:
    data = bytearray(8624)
    data[0:8] = hashlib.sha256(b"account:Reserve").digest()[:8]
    struct.pack_into("<Q", data, 8, 1)  # version
    data[32:64] = bytes(MARKET)
    data[64:96] = bytes(fixed(0xF1))  # farmCollateral, not read
    data[96:128] = bytes(fixed(0xF2))  # farmDebt, not read
    data[128:160] = bytes(MINT)
    data[160:192] = bytes(SUPPLY)
    data[192:224] = bytes(FEE_VAULT)
    struct.pack_into("<Q", data, 224, overrides.get("available", 123_456_789_000))
    struct.pack_into("<Q", data, 272, 9)  # mintDecimals
    data[408:440] = bytes(SPL_TOKEN)
    struct.pack_into("<Q", data, 4896, 7)  # originationFeeSf, not the flash fee
    struct.pack_into("<Q", data, 4904, overrides.get("fee_sf", 1 << 50))
    return data


def test_decode_reserve():
    info = klend.decode_reserve(RESERVE, KLEND, bytes(reserve_bytes()))
    assert info == klend.ReserveInfo(
        address=RESERVE,
        lending_market=MARKET,
        liquidity_mint=MINT,
        supply_vault=SUPPLY,
        fee_vault=FEE_VAULT,
        token_program=SPL_TOKEN,
        mint_decimals=9,
        available_amount=123_456_789_000,
        flash_loan_fee_sf=1 << 50,
    )
    assert klend.flash_loans_enabled(info)
    disabled = klend.decode_reserve(RESERVE, KLEND, bytes(reserve_bytes(fee_sf=2**64 - 1)))
    assert not klend.flash_loans_enabled(disabled)


def test_decode_reserve_rejects():
    good = bytes(reserve_bytes())
    with pytest.raises(klend.ReserveInvalid, match="owned by"):
        klend.decode_reserve(RESERVE, SPL_TOKEN, good)
    with pytest.raises(klend.ReserveInvalid, match="bytes"):
        klend.decode_reserve(RESERVE, KLEND, good[:-8])
    with pytest.raises(klend.ReserveInvalid, match="bytes"):
        klend.decode_reserve(RESERVE, KLEND, good + b"\0" * 8)
    bad = bytearray(good)
    bad[0:8] = hashlib.sha256(b"account:LendingMarket").digest()[:8]
    with pytest.raises(klend.ReserveInvalid, match="not a klend Reserve"):
        klend.decode_reserve(RESERVE, KLEND, bytes(bad))
    assert issubclass(klend.ReserveInvalid, ValueError)


def test_flash_loan_fee():
    one = 1 << 60
    bps = one // 10_000  # 1 bp, truncated to U68F60 (a hair under 0.0001)
    assert klend.flash_loan_fee(AMOUNT, 0) == 0  # calculate_fees: no fee when the rate is 0
    assert klend.flash_loan_fee(0, one // 1000) == 0
    assert klend.flash_loan_fee(1_000_000, one // 1000 + 1) == 1000  # 0.1%: 1000.000..., rounds to 1000
    assert klend.flash_loan_fee(1000, one // 1000 + 1) == 1  # exactly ~1
    assert klend.flash_loan_fee(100, bps) == 1  # 0.01 -> minimum fee 1
    assert klend.flash_loan_fee(15_000, bps + 1) == 2  # 1.5000... rounds half up to 2
    assert klend.flash_loan_fee(14_999, bps + 1) == 1  # 1.4999 rounds to 1
    assert klend.flash_loan_fee(25_000, one // 10_000) == 2  # 2.4999999... (sf truncated) -> 2
    assert klend.flash_loan_fee(AMOUNT, one // 2000) == (AMOUNT * (one // 2000) + (one >> 1)) >> 60
    with pytest.raises(ValueError, match="disabled"):
        klend.flash_loan_fee(AMOUNT, 2**64 - 1)
    with pytest.raises(ValueError, match="too small"):
        klend.flash_loan_fee(1, bps)  # minimum fee 1 >= amount 1: BorrowTooSmall
    with pytest.raises(ValueError, match="too small"):
        klend.flash_loan_fee(1000, one)  # 100% fee


def test_decode_instruction_round_trip():
    borrow = klend.flash_borrow_instruction(INFO, USER, USER_ATA, AMOUNT)
    repay = klend.flash_repay_instruction(INFO, USER, USER_ATA, AMOUNT, 3)
    assert klend.decode_instruction(borrow) == {"name": "flash_borrow_reserve_liquidity", "amount": AMOUNT}
    assert klend.decode_instruction(repay) == {
        "name": "flash_repay_reserve_liquidity",
        "amount": AMOUNT,
        "borrowInstructionIndex": 3,
    }
    from solders.instruction import Instruction

    assert klend.decode_instruction(Instruction(SPL_TOKEN, bytes(borrow.data), [])) is None
    assert klend.decode_instruction(Instruction(KLEND, b"\x01" * 16, [])) is None
    assert klend.decode_instruction(Instruction(KLEND, BORROW_DISC + b"\0\0", [])) is None


class FakeRpc:
    def __init__(self, accounts: dict) -> None:
        self.accounts = accounts
        self.calls = 0

    async def account_info(self, address, commitment):
        self.calls += 1
        assert commitment == "confirmed"
        return self.accounts.get(address)


async def test_reserve_cache():
    rpc = FakeRpc({RESERVE: SimpleNamespace(owner=KLEND, data=bytes(reserve_bytes()))})
    cache = klend.ReserveCache(rpc, ttl_s=60.0)
    first = await cache.get(RESERVE)
    second = await cache.get(RESERVE)
    assert first == second and first.supply_vault == SUPPLY
    assert rpc.calls == 1
    cache.ttl_s = -1.0  # everything expired
    await cache.get(RESERVE)
    assert rpc.calls == 2
    with pytest.raises(klend.ReserveInvalid, match="does not exist"):
        await cache.get(fixed(0xEE))
