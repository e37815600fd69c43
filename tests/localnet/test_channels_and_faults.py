"""The three intake channels (RPC, Jito, TPU over QUIC), the admin wire view, and injected faults."""
from __future__ import annotations

import asyncio
import base64
import time

import pytest
from solana.rpc.commitment import Processed
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.keypair import Keypair

from .conftest import SOL, funded_wallet, latest_blockhash, quic_send, transfer_tx, wait_slots, wait_status

SKIP_PREFLIGHT = TxOpts(skip_preflight=True)


def wire_view(admin, *signatures) -> list[dict]:
    return admin.get("/transactions", params=[("signature", str(s)) for s in signatures]).json()["transactions"]


async def test_quic_transaction_lands(cluster, rpc):
    payer, to = funded_wallet(cluster), Keypair()
    tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
    await quic_send(cluster.endpoints()["tpuQuic"], bytes(tx))
    await wait_status(rpc, tx.signatures[0], "confirmed")
    assert (await rpc.get_balance(to.pubkey())).value == SOL


async def test_same_signature_over_three_channels_lands_once(cluster, rpc, http, admin):
    payer, to = funded_wallet(cluster), Keypair()
    tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
    await rpc.send_transaction(tx, opts=SKIP_PREFLIGHT)
    engine = cluster.endpoints()["blockEngine"] + "/api/v1/transactions"
    encoded = base64.b64encode(bytes(tx)).decode()
    answer = await http.post(engine, json={"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": [encoded, {"encoding": "base64"}]})
    assert answer.json()["result"] == str(tx.signatures[0])
    await quic_send(cluster.endpoints()["tpuQuic"], bytes(tx))
    await wait_status(rpc, tx.signatures[0], "confirmed")
    await wait_slots(rpc, 2)
    [seen] = wire_view(admin, tx.signatures[0])
    assert sorted(seen["channels"]) == ["bundle", "rpc", "tpu"] and seen["timesReceived"] == 3
    assert seen["landedSlot"] is not None and seen["firstSeenNs"] <= time.time_ns()
    assert seen["firstSeenSlot"] <= seen["landedSlot"]
    assert (await rpc.get_balance(to.pubkey())).value == SOL
    assert (await rpc.get_balance(payer.pubkey())).value == 10 * SOL - SOL - 5000


async def test_first_seen_slot_is_the_slot_of_the_first_copy_by_any_channel(cluster, rpc, admin):
    """landedSlot - firstSeenSlot is the cluster's own slots-to-land: counted from the first copy
    it received (here an RPC copy the node drops), not from the copy that landed (a later TPU one)."""
    admin.put("/faults", json={"rpc": {"drop": 1.0}})
    payer, to = funded_wallet(cluster), Keypair()
    tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
    before = (await rpc.get_slot(Processed)).value  # the newest complete block: the slot being filled is one past it
    await rpc.send_transaction(tx, opts=SKIP_PREFLIGHT)
    after = (await rpc.get_slot(Processed)).value + 1
    [dropped] = wire_view(admin, tx.signatures[0])
    assert dropped["landedSlot"] is None and before < dropped["firstSeenSlot"] <= after
    await wait_slots(rpc, 3)
    await quic_send(cluster.endpoints()["tpuQuic"], bytes(tx))
    await wait_status(rpc, tx.signatures[0], "confirmed")
    [landed] = wire_view(admin, tx.signatures[0])
    assert landed["firstSeenSlot"] == dropped["firstSeenSlot"] and sorted(landed["channels"]) == ["rpc", "tpu"]
    assert landed["landedSlot"] - landed["firstSeenSlot"] >= 3


async def test_half_of_quic_transactions_dropped(cluster, rpc, admin):
    admin.put("/faults", json={"tpu": {"drop": 0.5}, "seed": 11})
    payer = funded_wallet(cluster, 100)
    blockhash = await latest_blockhash(rpc)
    transactions = [transfer_tx(payer, Keypair().pubkey(), SOL, blockhash) for _ in range(20)]
    await quic_send(cluster.endpoints()["tpuQuic"], *[bytes(tx) for tx in transactions])
    await wait_slots(rpc, 4)
    seen = wire_view(admin, *[tx.signatures[0] for tx in transactions])
    assert len(seen) == 20  # every one reached the wire
    dropped = [s for s in seen if s["droppedByFault"]]
    landed = [s for s in seen if s["landedSlot"] is not None]
    assert 0 < len(dropped) < 20 and len(landed) == 20 - len(dropped)
    statuses = (await rpc.get_signature_statuses([tx.signatures[0] for tx in transactions])).value
    assert sum(status is not None for status in statuses) == len(landed)


async def test_oversized_quic_stream_is_refused_and_counted(cluster, rpc, admin):
    before = admin.get("/stats").json()["tpu"][0]["oversized_streams"]
    await quic_send(cluster.endpoints()["tpuQuic"], b"\x01" * 1233, expect_close=True)
    assert admin.get("/stats").json()["tpu"][0]["oversized_streams"] == before + 1
    payer, to = funded_wallet(cluster), Keypair()  # the server keeps serving
    tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
    await quic_send(cluster.endpoints()["tpuQuic"], bytes(tx))
    await wait_status(rpc, tx.signatures[0], "confirmed")


async def test_a_closed_leader_port_refuses_while_the_other_leader_serves(cluster, rpc, admin):
    nodes = (await rpc.get_cluster_nodes()).value
    closed = admin.post("/validators/1/tpu", json={"open": False}).json()
    assert closed["open"] is False
    try:
        dead = next(n.tpu_quic for n in nodes if n.tpu_quic.endswith(f":{closed['port']}"))
        with pytest.raises((ConnectionError, asyncio.TimeoutError, TimeoutError)):
            await asyncio.wait_for(quic_send(dead, b"\x00"), 2)
        payer, to = funded_wallet(cluster), Keypair()
        tx = transfer_tx(payer, to.pubkey(), SOL, await latest_blockhash(rpc))
        await quic_send(cluster.endpoints()["tpuQuic"], bytes(tx))
        await wait_status(rpc, tx.signatures[0], "confirmed")
    finally:
        assert admin.post("/validators/1/tpu", json={"open": True}).json()["port"] == closed["port"]


async def test_rpc_faults(cluster, rpc, admin):
    payer, to = funded_wallet(cluster), Keypair()
    blockhash = await latest_blockhash(rpc)

    admin.put("/faults", json={"rpc": {"rate_limit": 1.0}})
    with pytest.raises(Exception) as limited:
        await rpc.send_transaction(transfer_tx(payer, to.pubkey(), SOL, blockhash), opts=SKIP_PREFLIGHT)
    assert "429" in repr(limited.value) or "429" in str(limited.value.__cause__)

    admin.put("/faults", json={"rpc": {"rate_limit": 0, "reject": 1.0}})
    with pytest.raises(RPCException, match="rejected"):
        await rpc.send_transaction(transfer_tx(payer, to.pubkey(), 2 * SOL, blockhash), opts=SKIP_PREFLIGHT)

    admin.put("/faults", json={"rpc": {"reject": 0, "drop": 1.0}})
    dropped = transfer_tx(payer, to.pubkey(), 3 * SOL, blockhash)
    assert (await rpc.send_transaction(dropped, opts=SKIP_PREFLIGHT)).value == dropped.signatures[0]

    admin.put("/faults", json={"rpc": {"drop": 0, "delay_ms": 300}})
    delayed = transfer_tx(payer, to.pubkey(), SOL, blockhash)
    started = time.monotonic()
    await rpc.send_transaction(delayed, opts=SKIP_PREFLIGHT)
    assert time.monotonic() - started >= 0.3
    await wait_status(rpc, delayed.signatures[0], "confirmed")
    await wait_slots(rpc, 2)
    assert (await rpc.get_signature_statuses([dropped.signatures[0]])).value == [None]
    assert (await rpc.get_balance(to.pubkey())).value == SOL
    counters = admin.get("/stats").json()["counters"]
    assert counters["rpc.rate_limited"] >= 1 and counters["rpc.reject"] >= 1 and counters["rpc.drop"] >= 1


def test_fault_settings_are_validated(admin):
    assert admin.put("/faults", json={"rpc": {"drop": 1.5}}).status_code == 400
    assert admin.put("/faults", json={"nosuch": {}}).status_code == 400
    settings = admin.put("/faults", json={"bundle": {"delay_ms": 5}}).json()
    assert settings["bundle"]["delay_ms"] == 5 and settings["rpc"]["drop"] == 0


async def test_airdrop_lands_in_the_next_block(cluster, rpc):
    wallet = Keypair()
    signature = (await rpc.request_airdrop(wallet.pubkey(), 2 * SOL)).value
    await wait_status(rpc, signature, "confirmed")
    assert (await rpc.get_balance(wallet.pubkey())).value == 2 * SOL
