"""agave's status cache: without searchTransactionHistory, getSignatureStatuses forgets old transactions.

A cluster of its own, with a small cache and short slots, driven through solana-py's
AsyncClient (solders parses every answer strictly).
"""
from __future__ import annotations

import asyncio
import time

import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solders.keypair import Keypair
from solders.transaction_status import TransactionConfirmationStatus

from localnet.cluster import ClusterConfig, ClusterThread
from localnet.ledger import Commitment, Ledger, Submission

from .conftest import SOL, funded_wallet, latest_blockhash, transfer_tx, wait_status

CACHE_SLOTS = 4
FINALIZED_DEPTH = 32  # ClusterConfig's default, as on mainnet
SLOT_MS = 20


@pytest.fixture(scope="module")
def small_cache_cluster():
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, status_cache_slots=CACHE_SLOTS, finalized_depth=FINALIZED_DEPTH)
    with ClusterThread(config) as running:
        yield running


async def landed_signature(cluster, rpc: AsyncClient):
    payer = funded_wallet(cluster)
    tx = transfer_tx(payer, Keypair().pubkey(), SOL, await latest_blockhash(rpc))
    await rpc.send_transaction(tx)
    status = await wait_status(rpc, tx.signatures[0], "processed")
    return tx.signatures[0], status.slot



async def test_a_status_leaves_the_cache_status_cache_slots_after_its_root_and_history_still_finds_it(small_cache_cluster):
    async with AsyncClient(small_cache_cluster.endpoints()["rpc"], commitment=Confirmed) as rpc:
        signature, slot = await landed_signature(small_cache_cluster, rpc)

        recent = (await rpc.get_signature_statuses([signature])).value[0]
        recent_with_history = (await rpc.get_signature_statuses([signature], search_transaction_history=True)).value[0]
        assert recent is not None and recent_with_history is not None
        assert recent.slot == recent_with_history.slot == slot
        assert recent.confirmation_status != TransactionConfirmationStatus.Finalized

        # agave counts the cache from the newest root, not from the tip.
        evicted_at = slot + FINALIZED_DEPTH + CACHE_SLOTS
        observations = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answer = await rpc.get_signature_statuses([signature])
            observations.append((answer.context.slot, answer.value[0]))
            if answer.value[0] is None:
                break
            await asyncio.sleep(0.005)
        assert observations[-1][1] is None, "the status never left the status cache"
        assert [(s, status is None) for s, status in observations] == [(s, s >= evicted_at) for s, _ in observations]
        assert any(status is not None and status.confirmation_status == TransactionConfirmationStatus.Finalized for _, status in observations)

        found = (await rpc.get_signature_statuses([signature], search_transaction_history=True)).value[0]
        assert found is not None and found.slot == slot and found.err is None
        assert found.confirmation_status == TransactionConfirmationStatus.Finalized and found.confirmations is None
        assert (await rpc.get_transaction(signature, max_supported_transaction_version=0)).value.slot == slot  # a ledger read


async def test_history_search_answers_only_for_signatures_that_landed(small_cache_cluster):
    async with AsyncClient(small_cache_cluster.endpoints()["rpc"], commitment=Confirmed) as rpc:
        signature, _ = await landed_signature(small_cache_cluster, rpc)
        never_sent = transfer_tx(Keypair(), Keypair().pubkey(), SOL, await latest_blockhash(rpc)).signatures[0]
        answer = await rpc.get_signature_statuses([never_sent, signature], search_transaction_history=True)
        assert answer.value[0] is None and answer.value[1] is not None


def test_a_transaction_of_the_block_being_filled_has_zero_confirmations():
    # A read can run between two slices of a block's execution; agave counts such a
    # transaction's confirmations as 0, and a negative count would not parse as a u64.
    ledger = Ledger()
    payer = Keypair()
    ledger.svm.airdrop(payer.pubkey(), 10 * SOL)
    tx = transfer_tx(payer, Keypair().pubkey(), SOL, ledger.latest_blockhash[0])
    ledger.enqueue(Submission([tx]))
    block = ledger.begin_block()
    ledger.execute(block.work[0], block)
    status = ledger.status(tx.signatures[0])
    assert status["confirmations"] == 0 and status["confirmationStatus"] == Commitment.processed.value
