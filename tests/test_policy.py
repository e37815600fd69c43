"""The plan policy (executor/policy/): what a built transaction may do with a hot wallet.

Three layers, each able to fail:
- the decoder and rules on hand-built compiled messages (no servers): every rule fires where
  it should, on the instruction it names, and the builder's own shapes pass;
- the settings: environment, POLICY_FILE, and bad values that stop the worker;
- the hostile-plan corpus on the session stack (real Temporal, NATS, local cluster, a real
  lookup table and a klend reserve written on chain): every draining or over-paying plan ends
  POLICY_VIOLATION naming its rule and instruction, with nothing signed (the plan's record is
  void, no sign stage ran), nothing on the wire and its wallet given back; the valid demo,
  bench and flash-loan plans pass; the per-plan and per-minute caps hold, across workers too;
  POLICY_SIMULATE refuses what the static rules cannot see.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import struct
import subprocess
import sys
import time
import uuid

import pytest
from solders.address_lookup_table_account import AddressLookupTableAccount
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import AccountMeta, CompiledInstruction, Instruction
from solders.keypair import Keypair
from solders.message import (
    MessageAddressTableLookup,
    MessageHeader,
    MessageV0,
)
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.token.associated import get_associated_token_address

from settings import SettingsError
from venue import klend
from executor.build import (
    TransactionBuilder,
    create_token_account_idempotent,
    route_instructions,
)
from executor.dispatch import Dispatch, Dispatcher
from executor.errors import PlanFailure
from venue.jito import STATIC_TIP_ACCOUNTS
from executor.policy import (
    DEFAULT_PROGRAMS,
    PlanPolicy,
    PolicySettings,
    PolicyViolation,
    SpendLedger,
    balance_losses,
)
from bench.plans import bench_plan
from tests.stack import ROOT, wait_until
from tests.test_lookup_tables import (
    _create_lookup_table,
    _extend_lookup_table,
    _recent_slot,
    _send_and_confirm,
)
from worker.bridge import workflow_id
from devtools.demo import MEMO_PROGRAM, validate

SYSTEM = "11111111111111111111111111111111"
TOKEN = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
TOKEN_2022 = "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"
ATA = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"
ALT_PROGRAM = "AddressLookupTab1e1111111111111111111111111"
KLEND = str(klend.KLEND_PROGRAM_ID)
TIP = STATIC_TIP_ACCOUNTS[3]
SOL = 1_000_000_000


# --- instruction makers (wire JSON, as a planner would publish them) -----------------------------


def meta(pubkey: str, signer: bool = False, writable: bool = False) -> dict:
    return {"pubkey": pubkey, "isSigner": signer, "isWritable": writable}


def ix(program: str, accounts: list[dict], data: bytes) -> dict:
    return {"programId": program, "accounts": accounts, "data": base64.b64encode(data).decode()}


def system_transfer(to: str, lamports: int) -> dict:
    return ix(SYSTEM, [meta("$WALLET", True, True), meta(to, writable=True)], struct.pack("<IQ", 2, lamports))


def transfer_with_seed(wallet: str, to: str, lamports: int, seed: str = "vault") -> dict:
    derived = str(Pubkey.create_with_seed(Pubkey.from_string(wallet), seed, Pubkey.from_string(SYSTEM)))
    data = struct.pack("<IQQ", 11, lamports, len(seed)) + seed.encode() + bytes(Pubkey.from_string(SYSTEM))
    return ix(SYSTEM, [meta(derived, writable=True), meta("$WALLET", True), meta(to, writable=True)], data)


def assign(program: str) -> dict:
    return ix(SYSTEM, [meta("$WALLET", True, True)], struct.pack("<I", 1) + bytes(Pubkey.from_string(program)))


def allocate(space: int) -> dict:
    return ix(SYSTEM, [meta("$WALLET", True, True)], struct.pack("<IQ", 8, space))


def approve(mint: str, delegate: str, amount: int = 2**64 - 1) -> dict:
    return ix(TOKEN, [meta(f"$WALLET_ATA:{mint}", writable=True), meta(delegate), meta("$WALLET", True)], bytes([4]) + amount.to_bytes(8, "little"))


def approve_checked(mint: str, delegate: str, decimals: int, amount: int = 2**64 - 1) -> dict:
    accounts = [meta(f"$WALLET_ATA:{mint}", writable=True), meta(mint), meta(delegate), meta("$WALLET", True)]
    return ix(TOKEN, accounts, bytes([13]) + amount.to_bytes(8, "little") + bytes([decimals]))


def set_owner(mint: str, new_owner: str) -> dict:
    return ix(TOKEN, [meta(f"$WALLET_ATA:{mint}", writable=True), meta("$WALLET", True)], bytes([6, 2, 1]) + bytes(Pubkey.from_string(new_owner)))


def close_account(mint: str, destination: str) -> dict:
    return ix(TOKEN, [meta(f"$WALLET_ATA:{mint}", writable=True), meta(destination, writable=True), meta("$WALLET", True)], bytes([9]))


def burn(mint: str, amount: int) -> dict:
    return ix(TOKEN, [meta(f"$WALLET_ATA:{mint}", writable=True), meta(mint, writable=True), meta("$WALLET", True)], bytes([8]) + amount.to_bytes(8, "little"))


def transfer_checked(source: str, mint: str, destination: str, amount: int, decimals: int) -> dict:
    accounts = [meta(source, writable=True), meta(mint), meta(destination, writable=True), meta("$WALLET", True)]
    return ix(TOKEN, accounts, bytes([12]) + amount.to_bytes(8, "little") + bytes([decimals]))


def create_ata_for(owner: str, mint: str) -> dict:
    ata = str(get_associated_token_address(Pubkey.from_string(owner), Pubkey.from_string(mint)))
    accounts = [meta("$WALLET", True, True), meta(ata, writable=True), meta(owner), meta(mint), meta(SYSTEM), meta(TOKEN)]
    return ix(ATA, accounts, bytes([1]))


def create_lookup_table_for(authority: str, recent_slot: int) -> dict:
    table, bump = Pubkey.find_program_address([bytes(Pubkey.from_string(authority)), recent_slot.to_bytes(8, "little")], Pubkey.from_string(ALT_PROGRAM))
    accounts = [meta(str(table), writable=True), meta(authority), meta("$WALLET", True, True), meta(SYSTEM)]
    return ix(ALT_PROGRAM, accounts, struct.pack("<IQB", 0, recent_slot, bump))


def stranger() -> str:
    return str(Keypair().pubkey())


# --- unit: the decoder and the rules on hand-built compiled messages -----------------------------

WALLET = Keypair().pubkey()
MINT_IN, MINT_OUT, VAULT_IN, VAULT_OUT = (Pubkey.new_unique() for _ in range(4))


def swap_route(wallet: Pubkey) -> list[Instruction]:
    """The demo pool's two transfer_checked and the memo, resolved for `wallet`."""
    plan = {
        "planId": "u-1", "opportunityId": "opp-u-1", "strategy": "arbitrage", "executionMethod": "rpc",
        "routes": [{"dex": "d", "inputMint": str(MINT_IN), "outputMint": str(MINT_OUT), "inAmount": 1, "outAmount": 1, "instructions": [
            transfer_checked(f"$WALLET_ATA:{MINT_IN}", str(MINT_IN), str(VAULT_IN), 1_000_000, 6),
            transfer_checked(str(VAULT_OUT), str(MINT_OUT), f"$WALLET_ATA:{MINT_OUT}", 1_010_000, 6),
            ix(MEMO_PROGRAM, [meta("$WALLET", True)], b"hft-executor plan u-1"),
        ]}],
        "inputToken": str(MINT_IN), "outputToken": str(MINT_OUT), "inputAmount": 1_000_000, "expectedProfit": 0.05, "simulationSuccess": True,
        "slippage": 50, "maxLatency": 1000, "deadline": 1_800_000_000_000, "timestamp": 1_700_000_000_000,
    }  # fmt: skip
    return route_instructions(validate(plan), wallet)


def resolved(instructions: list[dict], wallet: Pubkey = WALLET) -> list[Instruction]:
    """Wire instructions with placeholders resolved, as the builder does."""
    return [
        Instruction(
            Pubkey.from_string(i["programId"]),
            base64.b64decode(i["data"]),
            [
                AccountMeta(
                    wallet if m["pubkey"] == "$WALLET" else get_associated_token_address(wallet, Pubkey.from_string(m["pubkey"].split(":")[1])) if m["pubkey"].startswith("$WALLET_ATA:") else Pubkey.from_string(m["pubkey"]),
                    m["isSigner"], m["isWritable"],
                )
                for m in i["accounts"]
            ],
        )
        for i in instructions
    ]  # fmt: skip


def compiled(instructions: list[Instruction], *, limit: int = 66_000, price: int = 1_000, tables=()) -> MessageV0:
    budget = [set_compute_unit_limit(limit), set_compute_unit_price(price)]
    return MessageV0.try_compile(WALLET, budget + instructions, list(tables), Hash.default())


def tip(lamports: int = 16_666, to: str = TIP) -> Instruction:
    return transfer(TransferParams(from_pubkey=WALLET, to_pubkey=Pubkey.from_string(to), lamports=lamports))


class Tables:
    """Lookup tables by address, as LookupTableCache.get answers (the chain's are in the stack tests)."""

    def __init__(self, *tables: AddressLookupTableAccount) -> None:
        self.tables = {t.key: t for t in tables}

    async def get(self, addresses, max_age_s=None):
        return [self.tables[a] for a in addresses]


SWAP_DECLARED = {MINT_IN: 1_000_000, MINT_OUT: 0}  # the swap route's plan: its input, and what it pays into the pool


def examine(message: MessageV0, settings: PolicySettings | None = None, *, tables=None, tip_account: str | None = None, reserves=None, declared=SWAP_DECLARED):
    policy = PlanPolicy(settings or PolicySettings(), lookup_tables=tables, reserves=reserves)
    return asyncio.run(policy.examine(str(WALLET), message, tip_account, declared))


def refused(message: MessageV0, settings: PolicySettings | None = None, **options) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as caught:
        examine(message, settings, **options)
    return caught.value


def test_the_builders_own_shapes_pass_and_their_cost_is_counted():
    swap = swap_route(WALLET)
    rpc = examine(compiled(swap)).spend
    assert (rpc.base_fee, rpc.priority_fee, rpc.tip, rpc.outflow, rpc.total) == (5_000, 66, 0, 0, 5_066)
    bundle = examine(compiled(swap + [tip()]), tip_account=TIP).spend
    assert (bundle.tip, bundle.total) == (16_666, 21_732)
    wsol = get_associated_token_address(WALLET, Pubkey.from_string("So11111111111111111111111111111111111111112"))
    own = examine(compiled(resolved([system_transfer(str(wsol), SOL), close_account("So11111111111111111111111111111111111111112", "$WALLET")]))).spend
    assert own.outflow == 0 and own.total == 5_066, "wrapping and unwrapping SOL keeps it the wallet's"


def test_a_flash_loan_as_the_builder_makes_it_passes_against_the_reserve_on_chain():
    reserve = klend.ReserveInfo(Pubkey.new_unique(), Pubkey.new_unique(), MINT_IN, Pubkey.new_unique(), Pubkey.new_unique(), Pubkey.from_string(TOKEN))
    user = get_associated_token_address(WALLET, MINT_IN)
    loan = [
        create_token_account_idempotent(WALLET, WALLET, MINT_IN, Pubkey.from_string(TOKEN)),
        klend.flash_borrow_instruction(reserve, WALLET, user, 10**9),
        *swap_route(WALLET),
        klend.flash_repay_instruction(reserve, WALLET, user, 10**9, 3),
    ]
    assert examine(compiled(loan, limit=600_000), reserves=reserve_cache({reserve.address: reserve})).spend.total == 5_600
    elsewhere = klend.ReserveInfo(reserve.address, reserve.lending_market, MINT_IN, Pubkey.new_unique(), reserve.fee_vault, reserve.token_program)
    loan[-1] = klend.flash_repay_instruction(elsewhere, WALLET, user, 10**9, 3)  # the plan said another supply vault
    violation = refused(compiled(loan, limit=600_000), reserves=reserve_cache({reserve.address: reserve}))
    assert (violation.rule, violation.index) == ("flash_loan", 7)
    assert f"account 5 is {elsewhere.supply_vault}, but the reserve's supply vault on chain is {reserve.supply_vault}" in str(violation)
    assert refused(compiled(loan[:2]), reserves=reserve_cache({})).rule == "flash_loan", "a reserve not on chain"


def reserve_cache(reserves: dict):
    class Reserves:
        async def get(self, address):
            if address not in reserves:
                raise klend.ReserveInvalid(f"reserve {address} does not exist")
            return reserves[address]

    return Reserves()


STRANGER = Pubkey.new_unique()
HOSTILE_INSTRUCTIONS = [
    # (case, wire instructions appended to the swap, expected rule)
    ("system transfer out", [system_transfer(str(STRANGER), 5 * SOL)], "sol_transfer"),
    ("transfer-with-seed out", [transfer_with_seed(str(WALLET), str(STRANGER), SOL)], "sol_transfer"),
    ("assign the wallet", [assign(str(STRANGER))], "system_instruction"),
    ("allocate the wallet", [allocate(10)], "system_instruction"),
    ("approve a stranger", [approve(str(MINT_IN), str(STRANGER))], "token_delegate"),
    ("approve-checked a stranger", [approve_checked(str(MINT_IN), str(STRANGER), 6)], "token_delegate"),
    ("set owner to a stranger", [set_owner(str(MINT_IN), str(STRANGER))], "token_authority"),
    ("close to a stranger", [close_account(str(MINT_OUT), str(STRANGER))], "token_close"),
    ("burn", [burn(str(MINT_IN), 10**6)], "token_burn"),
    ("withdraw excess lamports", [ix(TOKEN_2022, [meta(str(MINT_IN), writable=True), meta(str(STRANGER), writable=True), meta("$WALLET", True)], bytes([38]))], "token_withdraw"),
    ("token batch", [ix(TOKEN, [meta("$WALLET", True)], bytes([255, 0]))], "token_instruction"),
    ("unknown program", [ix(str(STRANGER), [meta("$WALLET", True, True)], b"\x00")], "program"),
    ("ATA for a stranger", [create_ata_for(str(STRANGER), str(MINT_IN))], "ata_owner"),
    ("lookup table for a stranger", [create_lookup_table_for(str(STRANGER), 42)], "lookup_table"),
    ("klend withdraw", [ix(KLEND, [meta("$WALLET", True)] * 12, klend.discriminator("withdraw_obligation_collateral_and_redeem_reserve_collateral") + bytes(8))], "flash_loan"),
    ("second compute-unit price", [ix("ComputeBudget111111111111111111111111111111", [], bytes([3]) + (10**9).to_bytes(8, "little"))], "compute_budget"),
]


@pytest.mark.parametrize(("extra", "rule"), [(e, r) for _, e, r in HOSTILE_INSTRUCTIONS], ids=[c for c, _, _ in HOSTILE_INSTRUCTIONS])
def test_every_rule_names_itself_and_the_instruction_that_breaks_it(extra, rule):
    message = compiled(swap_route(WALLET) + resolved(extra))
    violation = refused(message, reserves=reserve_cache({}))
    assert violation.rule == rule, violation
    assert violation.index == 5, "after the compute budget (0, 1) and the swap (2, 3, 4)"
    assert f"policy rule {rule} (instruction 5)" in str(violation)


def test_allowed_destinations_and_programs_are_let_through_and_counted():
    settings = PolicySettings().allowing(destinations=[STRANGER], programs=[VAULT_IN])
    message = compiled(swap_route(WALLET) + resolved([system_transfer(str(STRANGER), 7_000), ix(str(VAULT_IN), [], b"")]))
    spend = examine(message, settings).spend
    assert spend.outflow == 7_000 and spend.total == 12_066
    assert refused(message).rule == "sol_transfer", "not without the setting"


# --- tokens leaving the wallet: counted by mint, up to what the plan declares (issue 20) ----------

WSOL_MINT = Pubkey.from_string("So11111111111111111111111111111111111111112")


def token_transfer(source: str, destination: str, amount: int) -> dict:
    """SPL Token Transfer (tag 3): no mint named."""
    return ix(TOKEN, [meta(source, writable=True), meta(destination, writable=True), meta("$WALLET", True)], bytes([3]) + amount.to_bytes(8, "little"))


def transfer_checked_with_fee(mint: str, destination: str, amount: int, decimals: int, fee: int) -> dict:
    accounts = [meta(f"$WALLET_ATA:{mint}", writable=True), meta(mint), meta(destination, writable=True), meta("$WALLET", True)]
    data = bytes([26, 1]) + amount.to_bytes(8, "little") + bytes([decimals]) + fee.to_bytes(8, "little")
    return ix(TOKEN_2022, accounts, data)


def wsol_drain(lamports: int, to: str) -> list[dict]:
    """The review's plan: create the wallet's wSOL account, wrap SOL into it (to the wallet's own
    account: not a SOL outflow), SyncNative, then SPL-transfer the wSOL to someone else."""
    wsol, native = f"$WALLET_ATA:{WSOL_MINT}", str(WSOL_MINT)
    return [
        ix(ATA, [meta("$WALLET", True, True), meta(wsol, writable=True), meta("$WALLET"), meta(native), meta(SYSTEM), meta(TOKEN)], bytes([1])),
        system_transfer(wsol, lamports),
        ix(TOKEN, [meta(wsol, writable=True)], bytes([17])),  # SyncNative
        transfer_checked(wsol, native, to, lamports, 9),
    ]


def test_a_wsol_drain_is_refused():
    """Review of issue 20: 50 SOL wrapped then sent away as wSOL was counted as 5,055 lamports."""
    violation = refused(compiled(resolved(wsol_drain(50 * SOL, str(STRANGER)))))
    assert (violation.rule, violation.index) == ("token_outflow", 5), violation
    assert f"sends 50000000000 base units of {WSOL_MINT} out of the wallet, over the 0 it may send" in str(violation)


def test_a_token_transfer_to_a_stranger_is_refused():
    swap = swap_route(WALLET)
    checked = refused(compiled(swap + resolved([transfer_checked(f"$WALLET_ATA:{MINT_OUT}", str(MINT_OUT), str(STRANGER), 1, 6)])))
    assert (checked.rule, checked.index) == ("token_outflow", 5), "the output token: the plan declares none of it leaving"
    plain = refused(compiled(swap + resolved([token_transfer(f"$WALLET_ATA:{MINT_OUT}", str(STRANGER), 10**6)])))
    assert (plain.rule, plain.index) == ("token_outflow", 5), "a Transfer names no mint: told by the wallet's account"
    fee = refused(compiled(swap + resolved([transfer_checked_with_fee(str(MINT_OUT), str(STRANGER), 10**6, 6, 10)])))
    assert (fee.rule, fee.index) == ("token_outflow", 5) and "Token-2022 TransferCheckedWithFee" in str(fee)
    unknown = refused(compiled(swap + resolved([token_transfer(str(VAULT_OUT), str(STRANGER), 10**6)])))
    assert unknown.rule == "token_outflow" and "cannot be counted" in str(unknown), "an account of a mint the plan does not name"


def test_outflows_of_a_mint_are_summed_over_the_plan():
    """Each transfer stays under the plan's declared input of 1,000,000; together they pass it."""
    split = [transfer_checked(f"$WALLET_ATA:{MINT_IN}", str(MINT_IN), str(STRANGER), 400_000, 6) for _ in range(3)]
    violation = refused(compiled(resolved(split)))
    assert (violation.rule, violation.index) == ("token_outflow", 4)
    assert f"instructions [2, 3, 4] send 1200000 base units of {MINT_IN}" in str(violation)
    assert examine(compiled(resolved(split[:2]))).spend.total == 5_066, "800,000 of a declared 1,000,000"
    settings = PolicySettings(max_outflow={MINT_IN: 200_000})
    assert examine(compiled(resolved(split)), settings).spend.total == 5_066, "POLICY_MAX_OUTFLOW adds to the declared input"
    over_cap = [transfer_checked(f"$WALLET_ATA:{MINT_OUT}", str(MINT_OUT), str(STRANGER), 150_000, 6) for _ in range(2)]
    capped = refused(compiled(resolved(over_cap)), PolicySettings(max_outflow={MINT_OUT: 200_000}))
    assert (capped.rule, capped.index) == ("token_outflow", 3) and "over the 200000 it may send" in str(capped)


def test_a_closed_wsol_account_goes_only_to_the_wallet():
    """A wSOL account's lamports are its whole balance, which a static check cannot know: closing it
    to an allowed destination (a SOL sink) would send all of it uncounted."""
    sink = Pubkey.new_unique()
    settings = PolicySettings().allowing(destinations=[sink])
    wrap_and_close = resolved([system_transfer(f"$WALLET_ATA:{WSOL_MINT}", 50 * SOL), close_account(str(WSOL_MINT), str(sink))])
    violation = refused(compiled(wrap_and_close), settings)
    assert (violation.rule, violation.index) == ("token_close", 3), violation
    other = refused(compiled(resolved([close_account(str(MINT_OUT), str(sink))])), settings)
    assert other.rule == "token_close", "any token account's lamports"


def test_an_approval_goes_only_to_the_wallet():
    """A delegation outlives the plan (the delegate takes the amount later, unseen): refused even to
    an allowed destination, whatever the amount."""
    sink = Pubkey.new_unique()
    settings = PolicySettings().allowing(destinations=[sink])
    for approval in (approve(str(MINT_IN), str(sink), 1), approve_checked(str(MINT_OUT), str(sink), 6, 1)):
        violation = refused(compiled(swap_route(WALLET) + resolved([approval])), settings)
        assert (violation.rule, violation.index) == ("token_delegate", 5), violation
    owner = refused(compiled(resolved([set_owner(str(MINT_IN), str(sink))])), settings)
    assert owner.rule == "token_authority", "an owner change takes the whole balance"


def test_a_swap_within_its_declared_input_passes():
    """The demo swap pays its input into the pool's vault; wSOL declared as input may leave as such."""
    assert examine(compiled(swap_route(WALLET))).spend.total == 5_066, "1,000,000 paid of a declared 1,000,000"
    assert refused(compiled(swap_route(WALLET)), declared={MINT_IN: 999_999, MINT_OUT: 0}).rule == "token_outflow"
    assert refused(compiled(swap_route(WALLET)), declared=None).rule == "token_outflow", "nothing declared, nothing may leave"
    wsol_in = resolved(wsol_drain(SOL, str(VAULT_IN)))
    assert examine(compiled(wsol_in), declared={WSOL_MINT: SOL}).spend.total == 5_066
    into_the_wallet = resolved([token_transfer(str(VAULT_OUT), f"$WALLET_ATA:{MINT_OUT}", 10**9)])
    assert examine(compiled(into_the_wallet)).spend.total == 5_066, "paid into the wallet's own account: not an outflow"


def test_fee_and_tip_caps_read_the_compiled_compute_budget():
    swap = swap_route(WALLET)
    price = refused(compiled(swap, limit=1_100_000, price=9_090_909_091))  # priorityFee worth 10 SOL
    assert (price.rule, price.index) == ("max_cu_price", 1) and "9090909091 micro-lamports" in str(price)
    total = refused(compiled(swap, limit=1_000_000, price=1_500_000), PolicySettings(max_priority_fee_lamports=1_000_000))
    assert (total.rule, total.index) == ("max_priority_fee", 1) and "1500000 lamports" in str(total)
    big_tip = refused(compiled(swap + [tip(100 * SOL)]), tip_account=TIP)
    assert (big_tip.rule, big_tip.index) == ("max_tip", 5)
    split = refused(compiled(swap + [tip(6_000_000), tip(6_000_000, STATIC_TIP_ACCOUNTS[0])]))
    assert split.rule == "max_tip" and "12000000 lamports" in str(split), "tips are summed"
    elsewhere = refused(compiled(swap + [tip(16_666, str(STRANGER))]), tip_account=str(STRANGER))
    assert (elsewhere.rule, elsewhere.index) == ("tip_account", 5)
    per_plan = refused(compiled(swap + [tip()]), PolicySettings(max_plan_lamports=20_000), tip_account=TIP)
    assert per_plan.rule == "max_sol_per_plan" and "spends 21732 lamports" in str(per_plan)


def test_a_destination_loaded_from_a_lookup_table_is_resolved():
    table = AddressLookupTableAccount(Pubkey.new_unique(), [Pubkey.new_unique(), STRANGER])
    message = compiled(swap_route(WALLET) + resolved([system_transfer(str(STRANGER), SOL)]), tables=[table])
    assert STRANGER not in message.account_keys, "the stranger is only in the table"
    violation = refused(message, tables=Tables(table))
    assert violation.rule == "sol_transfer" and str(STRANGER) in str(violation)


def test_a_program_index_pointing_into_a_lookup_table_is_resolved():
    """The runtime refuses a program loaded from a table, and the builder never makes one; the
    decoder still reads it where it points, so a hand-made message cannot hide its program."""
    table = AddressLookupTableAccount(Pubkey.new_unique(), [STRANGER])
    header = MessageHeader(num_required_signatures=1, num_readonly_signed_accounts=0, num_readonly_unsigned_accounts=0)
    message = MessageV0(
        header, [WALLET], Hash.default(), [CompiledInstruction(1, b"\x00", bytes([0]))],
        [MessageAddressTableLookup(table.key, b"", bytes([0]))],
    )  # fmt: skip
    violation = refused(message, tables=Tables(table))
    assert (violation.rule, violation.index) == ("program", 0) and str(STRANGER) in str(violation)


def test_the_wallet_must_be_the_only_signer():
    other = Keypair().pubkey()
    message = MessageV0.try_compile(other, [transfer(TransferParams(from_pubkey=other, to_pubkey=WALLET, lamports=1))], [], Hash.default())
    assert refused(message).rule == "signer"


def test_balance_losses_from_account_reads():
    wallet = str(WALLET)

    def token_account(mint: Pubkey, owner: Pubkey, amount: int) -> dict:
        data = bytes(mint) + bytes(owner) + amount.to_bytes(8, "little") + bytes(36) + bytes([1]) + bytes(56)
        return {"owner": TOKEN, "lamports": 2_039_280, "data": [base64.b64encode(data).decode(), "base64"]}

    a = Pubkey.new_unique()
    addresses = [wallet, "A", "B", "C"]
    before = [{"owner": SYSTEM, "lamports": 10 * SOL, "data": ["", "base64"]}, token_account(MINT_IN, WALLET, 500), token_account(MINT_OUT, WALLET, 100), token_account(MINT_IN, WALLET, 50)]
    after = [{"owner": SYSTEM, "lamports": 10 * SOL - 21_732, "data": ["", "base64"]}, token_account(MINT_IN, WALLET, 400), token_account(MINT_OUT, a, 100), None]
    sol, tokens = balance_losses(wallet, addresses, before, after)
    assert sol == 21_732
    assert tokens == {str(MINT_IN): 150, str(MINT_OUT): 100}, "paid 100, a closed account's 50, an account handed to another owner"


def test_the_static_check_costs_microseconds():
    """Measured: the check runs on every plan, on the hot path."""
    policy = PlanPolicy(PolicySettings())
    message = compiled(swap_route(WALLET) + [tip()])

    async def measure() -> float:
        await policy.examine(str(WALLET), message, TIP, SWAP_DECLARED)
        started = time.perf_counter()
        for _ in range(2_000):
            await policy.examine(str(WALLET), message, TIP, SWAP_DECLARED)
        return (time.perf_counter() - started) / 2_000 * 1e6

    micros = asyncio.run(measure())
    print(f"\npolicy static check: {micros:.1f} us per demo plan (jito_bundle, 6 instructions)")
    assert micros < 500


# --- settings ------------------------------------------------------------------------------------


def test_defaults_and_environment():
    assert PolicySettings.from_environment({}) == PolicySettings()
    settings = PolicySettings.from_environment(
        {
            "POLICY_ALLOWED_PROGRAMS": f"{STRANGER}, {VAULT_IN}",
            "POLICY_ALLOWED_DESTINATIONS": str(VAULT_OUT),
            "POLICY_MAX_TIP_LAMPORTS": "50_000",
            "POLICY_MAX_CU_PRICE": "10000",
            "POLICY_MAX_PRIORITY_FEE_LAMPORTS": "20000",
            "POLICY_MAX_SOL_PER_PLAN": "0.001",
            "POLICY_MAX_SOL_PER_WALLET_MINUTE": "1.5",
            "POLICY_SIMULATE": "1",
            "POLICY_SIMULATE_MAX_SOL_LOSS": "0.0005",
            "POLICY_SIMULATE_MAX_TOKEN_LOSS": "7",
            "POLICY_MAX_OUTFLOW": f"{MINT_IN}=1_000_000, So11111111111111111111111111111111111111112=5",
            "POLICY_TIP_ACCOUNTS": TIP,
        }
    )
    assert settings.allowed_programs == DEFAULT_PROGRAMS | {STRANGER, VAULT_IN}, "added to the defaults"
    assert settings.allowed_destinations == {VAULT_OUT}
    assert (settings.max_tip_lamports, settings.max_cu_price, settings.max_priority_fee_lamports) == (50_000, 10_000, 20_000)
    assert (settings.max_plan_lamports, settings.max_wallet_minute_lamports) == (1_000_000, 1_500_000_000)
    assert settings.simulate and settings.simulate_sol_loss_cap == 500_000 and settings.simulate_max_token_loss == 7
    assert settings.tip_accounts == {Pubkey.from_string(TIP)}
    assert settings.max_outflow == {MINT_IN: 1_000_000, WSOL_MINT: 5}
    assert settings.outflow_cap(str(MINT_IN)) == 1_000_000 and settings.outflow_cap(MINT_OUT) == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POLICY_MAX_TIP_LAMPORTS", "lots"), ("POLICY_MAX_SOL_PER_PLAN", "-1"), ("POLICY_ALLOWED_PROGRAMS", "not-a-key"), ("POLICY_SIMULATE", "maybe"),
        ("POLICY_TIP_ACCOUNTS", ","), ("POLICY_MAX_OUTFLOW", "1000"), ("POLICY_MAX_OUTFLOW", "not-a-mint=1"), ("POLICY_MAX_OUTFLOW", f"{MINT_IN}=-1"),
    ],
)
def test_a_bad_value_stops_the_worker_naming_it(variable, value):
    with pytest.raises(SettingsError, match=variable):
        PolicySettings.from_environment({variable: value})


def test_policy_file_then_environment(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"allowedPrograms": [str(STRANGER)], "allowedDestinations": [str(VAULT_IN)], "maxTipLamports": 123_456, "maxSolPerPlan": 0.5, "simulate": True, "maxOutflow": {str(MINT_OUT): 42}}))
    settings = PolicySettings.from_environment({"POLICY_FILE": str(path), "POLICY_MAX_TIP_LAMPORTS": "999", "POLICY_ALLOWED_DESTINATIONS": str(VAULT_OUT)})
    assert STRANGER in settings.allowed_programs and DEFAULT_PROGRAMS <= settings.allowed_programs
    assert settings.allowed_destinations == {VAULT_IN, VAULT_OUT}, "both lists count"
    assert settings.max_tip_lamports == 999, "the variable wins over the file"
    assert settings.max_plan_lamports == SOL // 2 and settings.simulate
    assert settings.max_outflow == {MINT_OUT: 42} and settings.describe()["maxOutflow"] == {str(MINT_OUT): 42}
    assert str(path) in settings.source and "POLICY_MAX_TIP_LAMPORTS" in settings.source
    path.write_text(json.dumps({"maxTip": 1}))
    with pytest.raises(SettingsError, match="unknown key"):
        PolicySettings.from_environment({"POLICY_FILE": str(path)})
    path.write_text("maxTipLamports: 1")
    with pytest.raises(SettingsError, match="not JSON"):
        PolicySettings.from_environment({"POLICY_FILE": str(path)})
    with pytest.raises(SettingsError, match="cannot be read"):
        PolicySettings.from_environment({"POLICY_FILE": str(tmp_path / "missing.json")})


# --- the session stack: fixtures ----------------------------------------------------------------


def reserve_data(market: Pubkey, mint: Pubkey, supply: Pubkey, fee_vault: Pubkey, token_program: str = TOKEN) -> bytes:
    """A klend Reserve account as klend writes it (layout: venue/klend.py, checked in test_klend.py)."""
    data = bytearray(klend.RESERVE_SIZE)
    data[0:8] = klend.RESERVE_DISCRIMINATOR
    struct.pack_into("<Q", data, klend.RESERVE_VERSION, 1)
    data[klend.RESERVE_LENDING_MARKET : klend.RESERVE_LENDING_MARKET + 32] = bytes(market)
    data[klend.RESERVE_LIQUIDITY_MINT : klend.RESERVE_LIQUIDITY_MINT + 32] = bytes(mint)
    data[klend.RESERVE_SUPPLY_VAULT : klend.RESERVE_SUPPLY_VAULT + 32] = bytes(supply)
    data[klend.RESERVE_FEE_VAULT : klend.RESERVE_FEE_VAULT + 32] = bytes(fee_vault)
    struct.pack_into("<Q", data, klend.RESERVE_AVAILABLE_AMOUNT, 10**15)
    struct.pack_into("<Q", data, klend.RESERVE_MINT_DECIMALS, 6)
    data[klend.RESERVE_TOKEN_PROGRAM : klend.RESERVE_TOKEN_PROGRAM + 32] = bytes(Pubkey.from_string(token_program))
    struct.pack_into("<Q", data, klend.RESERVE_FLASH_LOAN_FEE_SF, 0)
    return bytes(data)


@pytest.fixture(scope="module")
async def reserve(stack):
    """A klend reserve of the demo pool's input mint, written on the local cluster as klend would
    have it (klend itself is not deployed there: flash-loan plans are checked, not landed)."""
    fields = {"reserve": Keypair().pubkey(), "lendingMarket": Keypair().pubkey(), "supplyVault": Keypair().pubkey(), "feeReceiver": Keypair().pubkey()}
    data = reserve_data(fields["lendingMarket"], Pubkey.from_string(stack.pool.mint_in), fields["supplyVault"], fields["feeReceiver"])
    await stack.admin("POST", "/accounts", {"pubkey": str(fields["reserve"]), "owner": KLEND, "data": base64.b64encode(data).decode()})
    return {**{k: str(v) for k, v in fields.items()}, "liquidityMint": stack.pool.mint_in, "tokenProgram": TOKEN}


@pytest.fixture(scope="module")
async def hiding_table(stack):
    """A real lookup table on the local cluster holding a foreign program and a stranger."""
    authority = Keypair()
    foreign, hidden = Keypair().pubkey(), Keypair().pubkey()
    await stack.admin("POST", "/fund", {"pubkey": str(authority.pubkey()), "lamports": SOL})
    create, table = _create_lookup_table(authority.pubkey(), authority.pubkey(), await _recent_slot(stack))
    await _send_and_confirm(stack, authority, [create])
    extended = await _send_and_confirm(stack, authority, [_extend_lookup_table(table, authority.pubkey(), authority.pubkey(), [foreign, hidden])])
    while (await stack.rpc.get_slot()).value <= extended + 1:  # usable from the slot after the extension
        await asyncio.sleep(0.05)
    return {"table": str(table), "foreign": str(foreign), "hidden": str(hidden)}


@pytest.fixture
def worker_policy(stack):
    """Run the session worker with other policy settings for one test (restored after)."""
    dispatcher = stack.worker.dispatcher
    original = dispatcher.policy

    def use(settings: PolicySettings, spend: SpendLedger | None = None) -> PlanPolicy:
        builder = dispatcher.builder
        dispatcher.policy = PlanPolicy(settings, lookup_tables=builder.lookup_tables, reserves=builder.reserves, spend=spend, rpc=stack.worker.hot_rpc)
        return dispatcher.policy

    yield use
    dispatcher.policy = original


def with_route(plan: dict, *extra: dict) -> dict:
    """The demo plan with hostile instructions in its route (its memo stays, so the wire view finds it)."""
    plan["routes"][0]["instructions"][2:2] = list(extra)
    return plan


async def assert_refused_and_nothing_signed(stack, worker_log, plan_id: str, result: dict, rule: str, index: int | None) -> None:
    assert (result["status"], result["errorCode"]) == ("failed", "POLICY_VIOLATION"), result
    where = f"instruction {index}" if index is not None else "the whole transaction"
    assert f"policy rule {rule} ({where})" in result["error"], result["error"]
    assert result.get("signature") is None and not result.get("tipLamports")
    record = await stack.worker.records.read(plan_id)
    assert record is not None and record.void and record.void_code == "POLICY_VIOLATION", "the plan's record is void: nothing of it can ever be sent"
    lines = [line for line in worker_log.lines if f"plan={plan_id} " in line]
    assert any(f"stage=policy verdict=refused rule={rule}" in line for line in lines), lines
    assert not any("stage=sign" in line for line in lines), "nothing was signed"
    assert await stack.wire_transactions(plan_id) == [], "nothing on the wire"
    await wait_until(lambda: _no_lease(stack, plan_id), timeout=5)


async def _no_lease(stack, plan_id: str) -> bool:
    return not await stack.lease_holders(plan_id)


# --- the hostile-plan corpus -------------------------------------------------------------------


def _corpus(stack, reserve, table) -> list[tuple[str, dict, str, int | None]]:
    """(case, plan, rule, instruction). Demo plans on wallet 4 (5 for bundles), hostile additions
    inserted before the memo: compute budget 0-1, the swap's transfers 2-3, the addition at 4."""
    pool, thief = stack.pool, stranger()
    def rpc():
        return stack.plan("rpc", wallet=4)

    def bundle(**o):
        return stack.plan("jito_bundle", wallet=5, **o)
    wallet4 = stack.wallets[4]
    cases = [
        ("a System transfer out", with_route(rpc(), system_transfer(thief, 5 * SOL)), "sol_transfer", 4),
        ("a transfer-with-seed out", with_route(rpc(), transfer_with_seed(wallet4, thief, SOL)), "sol_transfer", 4),
        ("an assign of the wallet to another program", with_route(rpc(), assign(thief)), "system_instruction", 4),
        ("an allocate that bricks the fee payer", with_route(rpc(), allocate(165)), "system_instruction", 4),
        ("an Approve to a stranger", with_route(rpc(), approve(pool.mint_in, thief)), "token_delegate", 4),
        ("an ApproveChecked to a stranger", with_route(rpc(), approve_checked(pool.mint_out, thief, pool.decimals)), "token_delegate", 4),
        ("a SetAuthority to a stranger", with_route(rpc(), set_owner(pool.mint_in, thief)), "token_authority", 4),
        ("a CloseAccount to a stranger", with_route(rpc(), close_account(pool.mint_out, thief)), "token_close", 4),
        ("a Burn of the wallet's tokens", with_route(rpc(), burn(pool.mint_in, 10**6)), "token_burn", 4),
        ("an ATA the wallet pays for a stranger", with_route(rpc(), create_ata_for(thief, pool.mint_in)), "ata_owner", 4),
        ("a lookup table the wallet pays for a stranger", with_route(rpc(), create_lookup_table_for(thief, 7)), "lookup_table", 4),
        ("an unknown program", with_route(rpc(), ix(thief, [meta("$WALLET", True, True)], b"drain")), "program", 4),
        ("a tip of 100 SOL", {**bundle(), "tipLamports": 100 * SOL}, "max_tip", 5),
        ("a 'tip' to an account that is not Jito's", with_route(bundle(), system_transfer(thief, 16_666)), "sol_transfer", 4),
        ("a fee of 10 SOL via priorityFee", {**rpc(), "gasEstimate": 1_000_000, "priorityFee": 9_090_909_091}, "max_cu_price", 1),
        (
            "a lookup table that hides a foreign program",
            {**with_route(rpc(), ix(table["foreign"], [meta(table["hidden"], writable=True), meta("$WALLET", True, True)], b"x")), "addressLookupTables": [table["table"]]},
            "program", 4,
        ),
        (
            "a transfer to a stranger found only in a lookup table",
            {**with_route(rpc(), system_transfer(table["hidden"], SOL)), "addressLookupTables": [table["table"]]},
            "sol_transfer", 4,
        ),
        ("a flash loan whose repay goes to the plan's own supply vault", _flash_plan(stack, reserve, supplyVault=thief), "flash_loan", 2),
        ("a flash loan whose fee goes elsewhere", _flash_plan(stack, reserve, feeReceiver=thief), "flash_loan", 2),
        ("an SPL transfer of the wallet's output token to a stranger", with_route(rpc(), transfer_checked(f"$WALLET_ATA:{pool.mint_out}", pool.mint_out, thief, 1, pool.decimals)), "token_outflow", 4),
        ("one more base unit of the input than the plan declares", with_route(rpc(), transfer_checked(f"$WALLET_ATA:{pool.mint_in}", pool.mint_in, thief, 1, pool.decimals)), "token_outflow", 4),
        ("a route with its own klend instruction", with_route(rpc(), ix(KLEND, [meta("$WALLET", True, True)] * 12, klend.discriminator("withdraw_obligation_collateral_and_redeem_reserve_collateral") + bytes(8))), "flash_loan", 4),
    ]  # fmt: skip
    return cases


def _flash_plan(stack, reserve: dict, method: str = "rpc", **override) -> dict:
    plan = stack.plan(method, wallet=4)
    del plan["gasEstimate"]
    plan["flashLoan"] = {"provider": "kamino", "amount": 5_000_000, **{k: v for k, v in reserve.items()}, **override}
    return plan


CORPUS_SIZE = 22  # the profit-derived tip of 333 SOL has tests of its own below (the floor caps it now)


@pytest.mark.parametrize("case", range(CORPUS_SIZE))
async def test_hostile_plan_gets_policy_violation_and_nothing_is_signed(stack, worker_log, reserve, hiding_table, case):
    name, plan, rule, index = _corpus(stack, reserve, hiding_table)[case]
    result = await stack.execute(plan)
    print(f"\n{name}: {result['error']}")
    await assert_refused_and_nothing_signed(stack, worker_log, plan["planId"], result, rule, index)


async def test_the_whole_corpus_runs(stack, reserve, hiding_table):
    corpus = _corpus(stack, reserve, hiding_table)
    assert len(corpus) == CORPUS_SIZE >= 15, "every case is parametrized above"
    assert len({name for name, *_ in corpus}) == len(corpus)


async def test_a_workflow_started_without_the_bridge_is_checked_too(stack, worker_log):
    plan = with_route(stack.plan("rpc", wallet=3), system_transfer(stranger(), SOL))
    handle = await stack.temporal.start_workflow("ExecutePlan", validate(plan), id=workflow_id(plan["planId"]), task_queue=stack.config.temporal_task_queue)
    result = await asyncio.wait_for(handle.result(), 20)
    await assert_refused_and_nothing_signed(stack, worker_log, plan["planId"], result, "sol_transfer", 4)


async def test_a_tip_account_list_that_is_not_jitos_is_refused(stack):
    """A block engine whose getTipAccounts names someone else: the builder would tip them; the
    policy knows Jito's published accounts and refuses. Nothing is signed or recorded."""
    thief = stranger()
    worker = stack.worker

    async def tips() -> list[str]:
        return [thief]

    real = worker.dispatcher.builder
    builder = TransactionBuilder(real.blockhashes, real.lookup_tables, real.settings, tips, fees=real.fees, reserves=real.reserves)
    dispatcher = Dispatcher(wallets=worker.wallets, keys=worker.keys, builder=builder, records=worker.records, submitter=worker.dispatcher.submitter, policy=worker.policy)
    plan = validate(stack.plan("jito_bundle", wallet=2))
    dispatch = Dispatch(plan, dispatcher)
    with pytest.raises(PlanFailure) as refused_:
        await dispatch.prepared
    assert refused_.value.code.value == "POLICY_VIOLATION" and not refused_.value.retryable
    assert "policy rule tip_account (instruction 5)" in refused_.value.message and thief in refused_.value.message
    assert await worker.records.read(plan.plan_id) is None, "nothing recorded"
    await wait_until(lambda: _no_lease(stack, plan.plan_id), timeout=5)
    assert await stack.wire_transactions(plan.plan_id) == []


async def test_inspect_plan_shows_the_policy_verdict(stack):
    plan = with_route(stack.plan("rpc", wallet=1), approve(stack.pool.mint_in, stranger()))
    env = {**os.environ, **stack.dev.environment()}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "worker.cli", "inspect-plan", "-", "--json"],
        cwd=ROOT, env=env, input=json.dumps(plan), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)["policy"]
    assert (verdict["verdict"], verdict["rule"], verdict["instruction"]) == ("refused", "token_delegate", 4)
    assert await stack.wire_transactions(plan["planId"]) == []


# --- valid plans pass ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rpc", "jito_bundle", "tpu_direct", "race"])
async def test_demo_plans_pass_and_land(stack, worker_log, method):
    plan = stack.plan(method, wallet=0)
    result = await stack.execute(plan)
    assert result["status"] == "success", result
    assert any(f"plan={plan['planId']} stage=policy verdict=pass" in line for line in worker_log.lines)


async def test_a_memo_only_plan_passes(stack):
    from chaos.plans import memo_plan

    plan = memo_plan(stack.pool, f"t-{uuid.uuid4().hex[:12]}", "jito_bundle", max_latency_ms=20_000, now_ms=int(time.time() * 1000))
    assert (await stack.execute(plan))["status"] == "success"


async def test_bench_plans_pass_once_their_sink_is_allowed(stack, worker_policy):
    sink = stranger()
    await stack.admin("POST", "/fund", {"pubkey": sink, "lamports": SOL})
    plan = bench_plan(f"b-{uuid.uuid4().hex[:10]}", "rpc", sink)
    refused_ = await stack.execute(plan)
    assert refused_["errorCode"] == "POLICY_VIOLATION" and "sol_transfer" in refused_["error"], "a sink no setting allows is a stranger"
    worker_policy(PolicySettings().allowing(destinations=[sink]))  # what `hft-executor bench` runs with
    plan = bench_plan(f"b-{uuid.uuid4().hex[:10]}", "jito_bundle", sink)
    assert (await stack.execute(plan))["status"] == "success"


@pytest.mark.parametrize(("method", "create_account", "carried"), [("rpc", False, True), ("jito_bundle", True, False)])
async def test_flash_loan_plans_pass(stack, reserve, method, create_account, carried):
    """Built as the worker builds them and checked as the worker checks them (klend is not on the
    local cluster, so they are not sent): reserve data carried by the plan, or read from chain."""
    plan = _flash_plan(stack, reserve, method, createTokenAccount=create_account)
    if not carried:
        plan["flashLoan"] = {"provider": "kamino", "amount": 5_000_000, "reserve": reserve["reserve"], "createTokenAccount": create_account}
    event = validate(plan)
    built = await stack.worker.dispatcher.builder.build(event, plan["wallet"])
    spend = await stack.worker.policy.check(event, plan["wallet"], built)
    assert spend.compute_unit_limit == 600_000 and spend.priority_fee == 600
    assert spend.tip == (built.tip_lamports if method == "jito_bundle" else 0)


# --- caps ----------------------------------------------------------------------------------------


def built_tip(worker_log, plan_id: str) -> tuple[int, str]:
    """The tip and its source from the worker's `stage=build` line for the plan."""
    line = next(line for line in worker_log.lines if f"plan={plan_id} stage=build " in line)
    fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
    return int(fields["tip"]), fields["tip_source"]


async def test_the_per_plan_cap(stack, worker_log, worker_policy):
    worker_policy(PolicySettings(max_plan_lamports=10_000))
    cheap = await stack.execute(stack.plan("rpc", wallet=1))
    assert cheap["status"] == "success", "5,066 lamports: under the cap"
    tipped = stack.plan("jito_bundle", wallet=1)
    result = await stack.execute(tipped)
    await assert_refused_and_nothing_signed(stack, worker_log, tipped["planId"], result, "max_sol_per_plan", None)
    tip, source = built_tip(worker_log, tipped["planId"])  # from the cluster's tip floor: at least JITO_TIP_BASE
    assert tip >= stack.config.jito_tip_base and source == "floor:p75"
    assert f"spends {5_066 + tip} lamports" in result["error"]


async def _counted(stack, at_least: int) -> bool:
    return stack.worker.tip_escalation.counted >= at_least


@pytest.fixture
def tips_by_todays_rule(stack):
    """The session worker's builder with no tip floor (as when the stream is down or stale), for one test."""
    pricer = stack.worker.dispatcher.builder.tips
    floor = pricer.floor
    pricer.floor = lambda: None
    yield
    pricer.floor = floor


async def test_a_profit_derived_tip_over_the_cap_is_refused(stack, worker_log, tips_by_todays_rule):
    """Without a floor, today's rule prices 5% of $1,000,000 of profit: 333 SOL, over POLICY_MAX_TIP_LAMPORTS."""
    plan = {**stack.plan("jito_bundle", wallet=5), "expectedProfit": 1_000_000.0}
    result = await stack.execute(plan)
    await assert_refused_and_nothing_signed(stack, worker_log, plan["planId"], result, "max_tip", 5)
    assert built_tip(worker_log, plan["planId"]) == (333_333_333_333, "rule")


async def test_a_floor_priced_tip_is_capped_and_the_plan_lands(stack, worker_log):
    """Issue 23: "A tip comes from the tip floor and is capped by the policy". The same plan, priced by the
    session worker from its tip stream on the cluster: the floor's 75th, never over POLICY_MAX_TIP_LAMPORTS."""
    assert stack.worker.tip_stream is not None and stack.worker.tip_stream.floor is not None, "the worker keeps the cluster's floor"
    counted = stack.worker.tip_escalation.counted
    plan = {**stack.plan("jito_bundle", wallet=5), "expectedProfit": 1_000_000.0}
    result = await stack.execute(plan)
    assert result["status"] == "success", result
    await wait_until(lambda: _counted(stack, counted + 1), timeout=10)  # the result callback told the escalation: landed
    tip, source = built_tip(worker_log, plan["planId"])
    assert source == "floor:p75" and result["tipLamports"] == result["executionCost"]["tipLamports"] == tip
    assert stack.config.jito_tip_base <= tip <= PolicySettings().max_tip_lamports


async def test_the_per_wallet_minute_cap_and_its_window(stack, worker_log, worker_policy):
    window_s = 5.0  # the minute, shortened so the test can watch it move on
    ledger = SpendLedger(window_s=window_s)
    worker_policy(PolicySettings(max_wallet_minute_lamports=3 * 5_066 + 100), ledger)
    first = time.monotonic()
    for _ in range(3):
        assert (await stack.execute(stack.plan("rpc", wallet=2)))["status"] == "success"
    assert time.monotonic() - first < window_s - 1, "the machine is too slow for this window: the test would prove nothing"
    fourth = stack.plan("rpc", wallet=2)
    result = await stack.execute(fourth)
    await assert_refused_and_nothing_signed(stack, worker_log, fourth["planId"], result, "max_sol_per_wallet_minute", None)
    assert "spent 15198 lamports" in result["error"]
    other_wallet = await stack.execute(stack.plan("rpc", wallet=3))
    assert other_wallet["status"] == "success", "the cap is per wallet"
    await asyncio.sleep(first + window_s + 1.1 - time.monotonic())  # the window moves past the first three (1 s buckets)
    assert (await stack.execute(stack.plan("rpc", wallet=2)))["status"] == "success"


async def test_the_per_minute_total_is_shared_by_every_worker(stack, worker_log, worker_policy):
    """Another worker's spend, published in KV wallet_spend, counts against this worker's cap."""
    mine = await SpendLedger.open(stack.worker.js, "test-this-worker")  # KV writes are the worker role's
    theirs = await SpendLedger.open(stack.worker.js, "test-other-worker")
    tasks = [asyncio.create_task(mine.run()), asyncio.create_task(theirs.run())]
    try:
        wallet = stack.wallets[0]
        theirs.add(wallet, 1)
        # The watch hands over what the bucket already holds first (this session's worker spends on
        # this wallet too), then the other worker's entry: once that is seen, the view is complete.
        await wait_until(lambda: _is(theirs.worker in mine._theirs.get(wallet, {})), timeout=5)
        worker_policy(PolicySettings(max_wallet_minute_lamports=mine.total(wallet) + 100_000), mine)
        assert (await stack.execute(stack.plan("rpc", wallet=0)))["status"] == "success", "under the cap"
        theirs.add(wallet, 92_000)
        await wait_until(lambda: _is(mine._theirs[wallet][theirs.worker] and sum(mine._theirs[wallet][theirs.worker].values()) == 92_001), timeout=5)
        plan = stack.plan("rpc", wallet=0)
        result = await stack.execute(plan)
        await assert_refused_and_nothing_signed(stack, worker_log, plan["planId"], result, "max_sol_per_wallet_minute", None)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _is(value):
    return value


# --- simulation ------------------------------------------------------------------------------------


async def test_simulation_refuses_what_the_static_rules_cannot_see(stack, worker_log, worker_policy):
    """A plan may declare the input it pays out, and the static rules let that much leave; the
    simulation's cap is the configuration's (POLICY_MAX_OUTFLOW of the mint), never the plan's word:
    a plan declaring 51,000,000 and paying it is refused. (Before issue 20 the cap added the plan's
    inputAmount, so a plan declaring a large input got an equally large cap.)"""
    pool = stack.pool
    policy = worker_policy(PolicySettings(simulate=True, max_outflow={Pubkey.from_string(pool.mint_in): 1_000_000}))
    ok = await stack.execute(stack.plan("rpc", wallet=3))
    assert ok["status"] == "success", ok
    plan = with_route(stack.plan("rpc", wallet=3), transfer_checked(f"$WALLET_ATA:{pool.mint_in}", pool.mint_in, pool.vault_in, 50_000_000, pool.decimals))
    plan["inputAmount"] = 51_000_000  # what the route pays: the static rules let it through
    result = await stack.execute(plan)
    await assert_refused_and_nothing_signed(stack, worker_log, plan["planId"], result, "simulated_token_loss", None)
    assert f"the wallet's {pool.mint_in} falls by 51000000 base units in simulation, over the cap 1000000" in result["error"]

    failing = with_route(stack.plan("rpc", wallet=3), transfer_checked(f"$WALLET_ATA:{pool.mint_in}", pool.mint_in, pool.vault_in, 10**18, pool.decimals))
    failing["inputAmount"] = 10**18 + 1_000_000
    result = await stack.execute(failing)
    await assert_refused_and_nothing_signed(stack, worker_log, failing["planId"], result, "simulation_failed", None)
    assert policy.spend.total(stack.wallets[3]) == 5_066, "a plan refused by its simulation is not counted against its wallet"


NATIVE_MINT = "So11111111111111111111111111111111111111112"


async def _native_mint_and_a_strangers_wsol_account(stack) -> str:
    """The native mint (LiteSVM has none; mainnet has it from genesis) and a stranger's wSOL account."""
    mint = bytes(4 + 32) + (0).to_bytes(8, "little") + bytes([9, 1]) + bytes(4 + 32)  # no authority, supply 0, 9 decimals, initialized
    await stack.admin("POST", "/accounts", {"pubkey": NATIVE_MINT, "owner": TOKEN, "data": base64.b64encode(mint).decode()})
    thief = Keypair()
    await stack.admin("POST", "/fund", {"pubkey": str(thief.pubkey()), "lamports": SOL})
    create = create_token_account_idempotent(thief.pubkey(), thief.pubkey(), Pubkey.from_string(NATIVE_MINT), Pubkey.from_string(TOKEN))
    await _send_and_confirm(stack, thief, [create])
    return str(get_associated_token_address(thief.pubkey(), Pubkey.from_string(NATIVE_MINT)))


async def test_sol_wrapped_then_sent_away_is_refused_statically(stack, worker_log):
    """The review's plan of issue 20 on the local cluster, with the shipped defaults (no simulation):
    wrapping SOL into the wallet's own wSOL account keeps it the wallet's, and the SPL transfer of
    the wSOL to a stranger's account is SOL leaving, counted against the native mint: the plan
    declares none of it, so it is refused before anything is signed. (It used to pass, counted
    as 5,066 lamports.)"""
    theirs = await _native_mint_and_a_strangers_wsol_account(stack)
    plan = with_route(stack.plan("rpc", wallet=1), *wsol_drain(SOL // 2, theirs))
    result = await stack.execute(plan)
    await assert_refused_and_nothing_signed(stack, worker_log, plan["planId"], result, "token_outflow", 7)
    assert f"sends 500000000 base units of {NATIVE_MINT} out of the wallet, over the 0 it may send" in result["error"], result["error"]


async def test_simulation_caps_the_sols_loss(stack, worker_log, worker_policy):
    sink = stranger()
    worker_policy(PolicySettings(simulate=True, max_plan_lamports=SOL, simulate_max_sol_loss_lamports=1_000_000).allowing(destinations=[sink]))
    plan = with_route(stack.plan("rpc", wallet=1), system_transfer(sink, 10_000_000))
    result = await stack.execute(plan)
    await assert_refused_and_nothing_signed(stack, worker_log, plan["planId"], result, "simulated_sol_loss", None)
    assert "falls by 10005066 lamports" in result["error"], "the transfer and the fee"


async def test_simulation_cost_per_plan(stack):
    """Measured on the local cluster: build + policy with and without simulation, interleaved."""
    worker = stack.worker
    builder = worker.dispatcher.builder
    static = PlanPolicy(PolicySettings(), lookup_tables=builder.lookup_tables, reserves=builder.reserves)
    settings = PolicySettings(simulate=True, max_outflow={Pubkey.from_string(stack.pool.mint_in): 1_000_000})  # the demo pays 1,000,000
    simulating = PlanPolicy(settings, lookup_tables=builder.lookup_tables, reserves=builder.reserves, rpc=worker.hot_rpc)
    timings: dict[str, list[float]] = {"static": [], "simulate": []}
    for round_ in range(40):
        plan = validate(stack.plan("jito_bundle", wallet=round_ % 6))
        built = await builder.build(plan, plan.wallet)
        for name, policy in (("static", static), ("simulate", simulating))[:: 1 if round_ % 2 else -1]:
            started = time.perf_counter()
            await policy.check(plan, plan.wallet, built)
            timings[name].append((time.perf_counter() - started) * 1000)
    static_ms, simulate_ms = statistics.median(timings["static"]), statistics.median(timings["simulate"])
    print(f"\npolicy check p50: static {static_ms * 1000:.0f} us; with POLICY_SIMULATE {simulate_ms:.2f} ms per plan (40 plans, interleaved)")
    assert simulate_ms > static_ms, "a simulation is an RPC round trip"
    assert simulate_ms < 100


def test_the_rules_instruction_sets_are_the_numbers_they_were():
    """The policy's sets are written in the venue's names (venue/instructions.py); these are the
    numbers they held when they were written as numbers (issue 21), so a renamed or renumbered
    member cannot quietly widen what passes."""
    from executor.policy import SYSTEM_REFUSED_WHY, TOKEN_2022_PLAIN, TOKEN_PLAIN

    assert TOKEN_PLAIN == {0, 1, 2, 5, 7, 10, 11, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24}
    assert TOKEN_2022_PLAIN == {25, 29, 30, 34}
    assert set(SYSTEM_REFUSED_WHY) == {0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 12}
