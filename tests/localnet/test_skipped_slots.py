"""Skipped slots: an offline leader produces no block and loses what reaches its QUIC port.

Driven through solana-py's AsyncClient, aioquic (as a TPU client) and the admin endpoint.
"""
from __future__ import annotations

import asyncio

import httpx
import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed, Finalized, Processed
from solders.keypair import Keypair

from localnet.cluster import ClusterConfig, ClusterThread
from localnet.rpc import LEADER_SLOTS

from .conftest import SLOT_MS, SOL, funded_wallet, latest_blockhash, quic_send, transfer_tx, wait_slots, wait_status

OFFLINE = 1


@pytest.fixture(scope="module")
def offline_cluster():
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, validators=2, offline_leaders=(OFFLINE,), tpu_new_connections_per_minute=10_000)
    with ClusterThread(config) as running:
        yield running


def leader_of(slot: int) -> int:
    return (slot // LEADER_SLOTS) % 2


async def tpu_ports(rpc: AsyncClient) -> dict[str, str]:
    """identity -> tpuQuic address, from getClusterNodes."""
    return {str(node.pubkey): node.tpu_quic for node in (await rpc.get_cluster_nodes()).value}


async def in_leader_window(rpc: AsyncClient, index: int) -> int:
    """Wait until the processed slot is one of leader `index`'s; returns it."""
    while True:
        slot = (await rpc.get_slot(Processed)).value + 1  # the slot being filled
        if leader_of(slot) == index:
            return slot
        await asyncio.sleep(SLOT_MS / 2000)


async def test_offline_leader_loses_its_tpu_traffic_and_its_slots_have_no_block(offline_cluster):
    cluster = offline_cluster
    async with AsyncClient(cluster.endpoints()["rpc"], commitment=Confirmed) as rpc:
        # The schedule still names the offline leader: mainnet's schedule does not change.
        start = (await rpc.get_slot(Processed)).value
        leaders = [str(p) for p in (await rpc.get_slot_leaders(start, 4 * LEADER_SLOTS)).value]
        identities = cluster.call(lambda c: [str(v.identity.pubkey()) for v in c.validators])
        assert identities[OFFLINE] in leaders
        ports = await tpu_ports(rpc)
        offline_port, online_port = ports[identities[OFFLINE]], ports[identities[1 - OFFLINE]]

        payer = funded_wallet(cluster)
        blockhash = await latest_blockhash(rpc)
        lost = transfer_tx(payer, Keypair().pubkey(), SOL // 10, blockhash)
        landed = transfer_tx(payer, Keypair().pubkey(), SOL // 10, blockhash)
        queued = transfer_tx(payer, Keypair().pubkey(), SOL // 10, blockhash)

        await in_leader_window(rpc, OFFLINE)
        before = (await rpc.get_epoch_info(Processed)).value
        await quic_send(offline_port, bytes(lost))  # only to the offline leader, during its slots
        await rpc.send_raw_transaction(bytes(queued))  # RPC: waits for a leader that produces a block
        await quic_send(online_port, bytes(landed))

        for tx in (landed, queued):
            status = await wait_status(rpc, tx.signatures[0], "confirmed")
            assert leader_of(status.slot) != OFFLINE
        await wait_slots(rpc, 3 * 2 * LEADER_SLOTS)  # three full rotations: the offline leader's slots came and went
        after = (await rpc.get_epoch_info(Processed)).value
        assert (await rpc.get_signature_statuses([lost.signatures[0]], search_transaction_history=True)).value == [None]

        # The slot advanced through the skipped slots; the block height counted only produced blocks.
        produced = sum(1 for slot in range(before.absolute_slot + 1, after.absolute_slot + 1) if leader_of(slot) != OFFLINE)
        assert after.block_height - before.block_height == produced
        assert after.absolute_slot - before.absolute_slot > produced
        async with httpx.AsyncClient(base_url=cluster.endpoints()["admin"]) as admin:
            stats = (await admin.get("/stats")).json()
            wire = (await admin.get("/transactions", params={"signature": str(lost.signatures[0])})).json()["transactions"]
        assert stats["counters"]["tpu.offline_leader"] >= 1
        assert all(leader_of(slot) == OFFLINE for slot in stats["skippedSlots"])
        assert wire[0]["channels"] == ["tpu"] and wire[0]["droppedByFault"] == 1 and wire[0]["landedSlot"] is None


async def test_get_blocks_omits_skipped_slots_and_get_block_refuses_them(offline_cluster):
    """agave rpc/src/rpc.rs: getBlocks lists produced slots only; getBlock of a rooted skipped slot is -32007."""
    endpoint = offline_cluster.endpoints()["rpc"]
    async with AsyncClient(endpoint, commitment=Finalized) as rpc:
        start = (await rpc.get_slot(Finalized)).value + 1
        end = start + 2 * 2 * LEADER_SLOTS - 1
        while (await rpc.get_slot(Finalized)).value < end:
            await asyncio.sleep(SLOT_MS / 1000)
        blocks = (await rpc.get_blocks(start, end)).value
        assert blocks == [slot for slot in range(start, end + 1) if leader_of(slot) != OFFLINE]
        skipped = next(slot for slot in range(start, end + 1) if leader_of(slot) == OFFLINE)
        async with httpx.AsyncClient() as http:
            answer = (await http.post(endpoint, json={"jsonrpc": "2.0", "id": 1, "method": "getBlock", "params": [skipped]})).json()
        assert answer["error"] == {"code": -32007, "message": f"Slot {skipped} was skipped, or missing due to ledger jump to recent snapshot"}
        after = next(slot for slot in blocks if slot > skipped)
        block = (await rpc.get_block(after, "json", max_supported_transaction_version=0)).value
        parent = (await rpc.get_block(block.parent_slot, "json", max_supported_transaction_version=0)).value
        assert block.parent_slot == after - LEADER_SLOTS - 1  # over the offline leader's four slots, to the last block before them
        assert block.block_height == parent.block_height + 1 and block.previous_blockhash == parent.blockhash


async def test_leader_taken_offline_at_run_time(cluster, rpc, admin):
    """The session cluster (2 validators, all online): the admin endpoint takes leader 1 offline, then back."""
    identities = cluster.call(lambda c: [str(v.identity.pubkey()) for v in c.validators])
    ports = await tpu_ports(rpc)
    payer = funded_wallet(cluster)
    assert admin.get("/skips").json()["offlineLeaders"] == []
    assert admin.put("/skips", json={"offlineLeaders": [1]}).json()["offlineLeaders"] == [1]
    try:
        lost = transfer_tx(payer, Keypair().pubkey(), SOL // 10, await latest_blockhash(rpc))
        await quic_send(ports[identities[1]], bytes(lost))
        await wait_slots(rpc, 3 * 2 * LEADER_SLOTS)
        assert (await rpc.get_signature_statuses([lost.signatures[0]])).value == [None]
        skipped = admin.get("/stats").json()["skippedSlots"]
        assert skipped and all(leader_of(slot) == 1 for slot in skipped)
    finally:
        assert admin.put("/skips", json={"offlineLeaders": []}).json()["offlineLeaders"] == []
    back = transfer_tx(payer, Keypair().pubkey(), SOL // 10, await latest_blockhash(rpc))
    await quic_send(ports[identities[1]], bytes(back))
    await wait_status(rpc, back.signatures[0], "confirmed")
    assert admin.put("/skips", json={"offlineLeaders": [7]}).status_code == 400


async def test_seeded_skip_rate_is_repeatable():
    """Under one seed the same slots are skipped, whatever the timing."""
    fates = []
    for _ in range(2):
        with ClusterThread(ClusterConfig.auto_ports(slot_ms=SLOT_MS, skip_rate=0.5, skip_seed=7)) as running:
            fates.append(running.call(lambda c: [c.slot_skipped(s) for s in range(1000, 1200)]))
    assert fates[0] == fates[1] and 40 < sum(fates[0]) < 160
