"""Address lookup tables on the real local cluster: a table created and extended with the
cluster's own ALT program over JSON-RPC makes a plan that is far too big for one packet fit
in one; without it the executor refuses the plan (TX_TOO_LARGE) before anything is sent, and
a table that does not exist fails the build (BUILD_FAILED) by name."""
from __future__ import annotations

import asyncio
import re
import struct
import time

import pytest
from solana.rpc.commitment import Confirmed, Processed
from solders.address_lookup_table_account import (
    ID as ALT_PROGRAM,
    AddressLookupTable,
    AddressLookupTableAccount,
    derive_lookup_table_address,
)
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_status import TransactionConfirmationStatus

from executor.build import PACKET_DATA_SIZE, route_instructions
from devtools.demo import validate

SYSTEM_PROGRAM = Pubkey.from_string("11111111111111111111111111111111")
# The ALT program's instructions (bincode: u32 variant tag, then the fields)
CREATE_LOOKUP_TABLE = 0  # { recent_slot: u64, bump_seed: u8 }
EXTEND_LOOKUP_TABLE = 2  # { new_addresses: Vec<Pubkey> }  (u64 length prefix)
EXTRA_ACCOUNTS = 40  # read-only accounts a "big route" touches
PER_EXTEND = 20  # addresses per ExtendLookupTable transaction (each must fit one packet too)
WALLET = 5


def _create_lookup_table(authority: Pubkey, payer: Pubkey, recent_slot: int) -> tuple[Instruction, Pubkey]:
    table, bump = derive_lookup_table_address(authority, recent_slot)
    data = struct.pack("<IQB", CREATE_LOOKUP_TABLE, recent_slot, bump)
    accounts = [
        AccountMeta(table, is_signer=False, is_writable=True),
        AccountMeta(authority, is_signer=True, is_writable=False),
        AccountMeta(payer, is_signer=True, is_writable=True),
        AccountMeta(SYSTEM_PROGRAM, is_signer=False, is_writable=False),
    ]
    return Instruction(ALT_PROGRAM, data, accounts), table


def _extend_lookup_table(table: Pubkey, authority: Pubkey, payer: Pubkey, addresses: list[Pubkey]) -> Instruction:
    data = struct.pack("<IQ", EXTEND_LOOKUP_TABLE, len(addresses)) + b"".join(bytes(a) for a in addresses)
    accounts = [
        AccountMeta(table, is_signer=False, is_writable=True),
        AccountMeta(authority, is_signer=True, is_writable=False),
        AccountMeta(payer, is_signer=True, is_writable=True),
        AccountMeta(SYSTEM_PROGRAM, is_signer=False, is_writable=False),
    ]
    return Instruction(ALT_PROGRAM, data, accounts)


async def _send_and_confirm(stack, payer: Keypair, instructions: list[Instruction], timeout: float = 5.0) -> int:
    """Sign, send over JSON-RPC, poll getSignatureStatuses until confirmed; returns the landed slot."""
    blockhash = (await stack.rpc.get_latest_blockhash(Confirmed)).value.blockhash
    tx = VersionedTransaction(MessageV0.try_compile(payer.pubkey(), instructions, [], blockhash), [payer])
    signature = (await stack.rpc.send_raw_transaction(bytes(tx))).value
    deadline = time.monotonic() + timeout
    while True:
        status = (await stack.rpc.get_signature_statuses([signature])).value[0]
        if status is not None and status.confirmation_status in (TransactionConfirmationStatus.Confirmed, TransactionConfirmationStatus.Finalized):
            assert status.err is None, f"{signature} landed with {status.err}"
            return status.slot
        assert time.monotonic() < deadline, f"{signature} not confirmed within {timeout} s (status {status})"
        await asyncio.sleep(0.05)


async def _recent_slot(stack) -> int:
    """A recent slot, as a client takes it for CreateLookupTable: getSlot at `confirmed`
    (the program checks it against the SlotHashes sysvar, which the cluster updates every slot)."""
    return (await stack.rpc.get_slot(Confirmed)).value


@pytest.fixture(scope="module")
async def big_table(stack):
    """A lookup table holding EXTRA_ACCOUNTS fresh read-only addresses, made on-chain by the ALT program."""
    started = time.monotonic()
    authority = Keypair()
    await stack.admin("POST", "/fund", {"pubkey": str(authority.pubkey()), "lamports": 1_000_000_000})
    create, table = _create_lookup_table(authority.pubkey(), authority.pubkey(), await _recent_slot(stack))
    await _send_and_confirm(stack, authority, [create])
    extras = [Keypair().pubkey() for _ in range(EXTRA_ACCOUNTS)]
    last_extended = 0
    for start in range(0, len(extras), PER_EXTEND):
        extend = _extend_lookup_table(table, authority.pubkey(), authority.pubkey(), extras[start : start + PER_EXTEND])
        last_extended = await _send_and_confirm(stack, authority, [extend])
    # Warm-up: a table's new addresses are usable only from the slot after its last extension.
    while (await stack.rpc.get_slot(Processed)).value <= last_extended + 1:
        await asyncio.sleep(0.05)
    state = AddressLookupTable.deserialize(bytes((await stack.rpc.get_account_info(table, Confirmed)).value.data))
    assert list(state.addresses) == extras
    assert state.meta.authority == authority.pubkey() and state.meta.last_extended_slot == last_extended
    print(f"\nlookup table {table} with {len(extras)} addresses ready in {time.monotonic() - started:.2f} s")
    return table, extras


def _big_plan(stack, extras: list[Pubkey], **fields) -> dict:
    """A swap plan whose first transfer_checked also names every extra account (read-only, non-signer:
    SPL Token ignores accounts past the authority when the authority is not a multisig)."""
    plan = stack.plan("rpc", wallet=WALLET)
    first = plan["routes"][0]["instructions"][0]
    first["accounts"] += [{"pubkey": str(k), "isSigner": False, "isWritable": False} for k in extras]
    plan.update(fields)
    return plan


def _size(plan: dict, tables: list[AddressLookupTableAccount]) -> int:
    """The signed size of the plan's transaction as the executor compiles it (compute budget + routes)."""
    event = validate(plan)
    wallet = Pubkey.from_string(plan["wallet"])
    instructions = [set_compute_unit_limit(event.gas_estimate), set_compute_unit_price(event.priority_fee), *route_instructions(event, wallet)]
    message = MessageV0.try_compile(wallet, instructions, tables, Hash.default())
    return 1 + 64 * message.header.num_required_signatures + len(to_bytes_versioned(message))


async def test_lookup_table_fits_a_plan_too_big_without_it(stack, big_table):
    table, extras = big_table
    plan = _big_plan(stack, extras, addressLookupTables=[str(table)])
    without = _size(plan, [])
    with_table = _size(plan, [AddressLookupTableAccount(table, extras)])
    print(f"transaction size: {without} bytes without the table, {with_table} bytes with it")
    assert without > 1400 and with_table <= PACKET_DATA_SIZE

    result = await stack.execute(plan)

    assert result["status"] == "success", result
    on_wire = await stack.wire_transactions(plan["planId"])
    assert [row["signature"] for row in on_wire] == [result["signature"]], on_wire
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    signature = Signature.from_string(result["signature"])
    landed = (await stack.rpc.get_transaction(signature, "base64", max_supported_transaction_version=0)).value
    tx = landed.transaction.transaction
    assert isinstance(tx, VersionedTransaction) and tx.signatures[0] == signature
    assert landed.transaction.meta.err is None
    assert len(bytes(tx)) == with_table <= PACKET_DATA_SIZE
    lookups = tx.message.address_table_lookups
    assert [lookup.account_key for lookup in lookups] == [table]
    assert sorted(bytes(lookups[0].readonly_indexes)) == list(range(EXTRA_ACCOUNTS)) and bytes(lookups[0].writable_indexes) == b""
    assert [str(k) for k in landed.transaction.meta.loaded_addresses.readonly] == [str(extras[i]) for i in bytes(lookups[0].readonly_indexes)]
    assert not set(extras) & set(tx.message.account_keys), "no extra account is a static key"


async def test_same_plan_without_the_table_is_too_large_and_never_sent(stack, big_table):
    _, extras = big_table
    plan = _big_plan(stack, extras)
    expected = _size(plan, [])

    result = await stack.execute(plan)

    assert result["status"] == "failed" and result["errorCode"] == "TX_TOO_LARGE", result
    sizes = [int(n) for n in re.findall(r"(\d+) bytes", result["error"])]
    assert expected in sizes and expected > 1400, result["error"]
    assert str(PACKET_DATA_SIZE) in result["error"]
    assert result.get("signature") is None
    assert await stack.wire_transactions(plan["planId"]) == []


async def test_plan_naming_a_missing_lookup_table_fails_the_build(stack):
    missing = Keypair().pubkey()
    plan = stack.plan("rpc", wallet=WALLET)
    plan["addressLookupTables"] = [str(missing)]

    result = await stack.execute(plan)

    assert result["status"] == "failed" and result["errorCode"] == "BUILD_FAILED", result
    assert str(missing) in result["error"]
    assert result.get("signature") is None
    assert await stack.wire_transactions(plan["planId"]) == []


async def test_plan_naming_an_account_that_is_not_a_lookup_table_fails_the_build(stack):
    """An existing account of another kind (here a mint) is a build error, not a transient one."""
    plan = stack.plan("rpc", wallet=WALLET, deadline_ms=8_000, max_latency_ms=8_000)
    plan["addressLookupTables"] = [stack.pool.mint_in]

    result = await stack.execute(plan, timeout=20)

    assert result["status"] == "failed" and result["errorCode"] == "BUILD_FAILED", result
    assert f"{stack.pool.mint_in} is not an address lookup table" in result["error"]
    assert await stack.wire_transactions(plan["planId"]) == []
