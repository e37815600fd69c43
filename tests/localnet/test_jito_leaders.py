"""Jito and non-Jito leaders: a bundle lands only in the slot of a leader that runs Jito's client.

Driven through solana-py's AsyncClient and the block engine's JSON-RPC (sendBundle, getInflightBundleStatuses).
"""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed, Processed
from solders.account import Account
from solders.keypair import Keypair
from solders.system_program import TransferParams, transfer

from localnet.cluster import ClusterConfig, ClusterThread
from localnet.ledger import BLOCKHASH_VALIDITY_BLOCKS, Ledger, Submission
from localnet.rpc import LEADER_SLOTS

from venue.programs import SYSTEM_PROGRAM

from .conftest import SLOT_MS, SOL, funded_wallet, latest_blockhash, sign, transfer_tx, wait_status
from .test_block_engine import b64, jito, tip_ix, wait_bundle

NON_JITO = 1


@pytest.fixture(scope="module")
def mixed_cluster():
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=SLOT_MS, validators=2, non_jito_leaders=(NON_JITO,))) as running:
        yield running


def leader_of(slot: int) -> int:
    return (slot // LEADER_SLOTS) % 2


async def test_bundle_waits_for_a_jito_leader(mixed_cluster):
    cluster = mixed_cluster
    async with AsyncClient(cluster.endpoints()["rpc"], commitment=Confirmed) as rpc, httpx.AsyncClient(timeout=10) as http:
        payer = funded_wallet(cluster)
        blockhash = await latest_blockhash(rpc)
        bundle = [sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=SOL)), tip_ix(payer, 5000)], blockhash)]
        plain = transfer_tx(payer, Keypair().pubkey(), SOL, blockhash)
        # Submit in the first half of the non-Jito leader's four slots: without the hold the bundle would
        # land in that leader's next slot. Either of two slots, so a slow machine's poll does not miss
        # the window rotation after rotation.
        waited = time.monotonic()
        while True:
            filling = (await rpc.get_slot(Processed)).value + 1
            if leader_of(filling) == NON_JITO and filling % LEADER_SLOTS in (0, 1):
                break
            assert time.monotonic() - waited < 60, "never saw the non-Jito leader's window"
            await asyncio.sleep(SLOT_MS / 4000)
        bundle_id = (await jito(http, cluster, "sendBundle", [[b64(tx) for tx in bundle], {"encoding": "base64"}])).json()["result"]
        await rpc.send_raw_transaction(bytes(plain))
        landed = await wait_bundle(http, cluster, bundle_id, {"Landed", "Failed"})
        assert landed["status"] == "Landed"
        assert leader_of(landed["landed_slot"]) != NON_JITO and landed["landed_slot"] > filling
        # A plain transaction is not held: any leader takes it.
        assert (await wait_status(rpc, plain.signatures[0])).slot < landed["landed_slot"]


def test_jito_leaders_at_run_time(cluster, admin):
    assert admin.get("/jito-leaders").json() == {"nonJitoLeaders": []}
    assert admin.put("/jito-leaders", json={"nonJitoLeaders": [1]}).json() == {"nonJitoLeaders": [1]}
    assert admin.get("/stats").json()["jito"] == {"nonJitoLeaders": [1]}
    assert admin.put("/jito-leaders", json={"nonJitoLeaders": [5]}).status_code == 400
    assert admin.put("/jito-leaders", json={"nonJitoLeaders": []}).json() == {"nonJitoLeaders": []}


def test_a_held_bundle_fails_once_its_blockhash_expired():
    """In a non-Jito slot a bundle is held while its blockhash is valid, and fails after (the Ledger alone)."""
    ledger = Ledger()
    payer = Keypair()
    ledger.svm.set_account(payer.pubkey(), Account(10 * SOL, b"", SYSTEM_PROGRAM))
    blockhash = ledger.latest_blockhash[0]
    bundle = Submission([sign(payer, [tip_ix(payer, 5000)], blockhash)], bundle_id="held")
    assert ledger.hold_bundles([bundle]) == [] and ledger.pending == [bundle] and "held" not in ledger.bundles
    ledger.pending = []
    for _ in range(BLOCKHASH_VALIDITY_BLOCKS + 1):
        ledger.produce_block()
    assert ledger.hold_bundles([bundle]) == [] and ledger.pending == []
    assert ledger.bundles["held"].landed is False
