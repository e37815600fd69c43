"""Confirm says "not landed" only when the chain says so: block height past the transaction's
lastValidBlockHeight and no status, searched through the node's whole history, in one request.

Against the session stack's real local cluster (50 ms slots: a blockhash lives ~7.5 s; its
status cache of 40 rooted slots forgets a landed transaction ~3.6 s after it lands).
"""
from __future__ import annotations

import asyncio
import time

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from executor.confirm import SignatureWatcher, follow
from venue.rpc import SolanaRpc


async def _never(*_):
    raise AssertionError("must not be called")


def _follow(watcher: SignatureWatcher, signature: str, last_valid: int, **options):
    return follow(
        "test-plan", signature, last_valid, watcher,
        commitment="confirmed", rebroadcast=options.get("rebroadcast"), rebroadcast_s=options.get("rebroadcast_s", 0.2),
        may_resend=options.get("may_resend", lambda: True), heartbeat=lambda details: None,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def landed_and_expired(stack):
    """A transaction that landed, whose blockhash has expired since, and which the node's recent
    status cache has forgotten: what a re-run after a long outage has to judge."""
    rpc = SolanaRpc(stack.endpoints["rpc"])
    wallet = stack.wallets[5]
    answer = await rpc.call("getLatestBlockhash", [{"commitment": "confirmed"}])
    blockhash, last_valid = answer["value"]["blockhash"], answer["value"]["lastValidBlockHeight"]
    message = MessageV0.try_compile(
        Pubkey.from_string(wallet),
        [transfer(TransferParams(from_pubkey=Pubkey.from_string(wallet), to_pubkey=Keypair().pubkey(), lamports=1_000_000))],
        [],
        Hash.from_string(blockhash),
    )
    tx: VersionedTransaction = stack.dev.keys.sign(wallet, message)
    signature = str(tx.signatures[0])
    await rpc.send_transaction(bytes(tx))
    await stack.wait_block_height_past(last_valid)
    # ...and out of the status cache (counted from the root: landed + 32 + 300 slots at most)
    deadline = time.monotonic() + 40
    while (await rpc.signature_statuses([signature]))[0] is not None:
        assert time.monotonic() < deadline, "the status cache never forgot the transaction"
        await asyncio.sleep(0.5)
    _, status = await rpc.landed_or_expired(signature, "confirmed")
    assert status is not None, "it did land"
    yield rpc, signature, last_valid
    await rpc.close()


async def test_a_watcher_that_never_asked_about_a_signature_does_not_call_it_expired(landed_and_expired):
    """A re-run starts watching a signature while the shared poller already knows a block height
    past its lastValidBlockHeight: that view predates the signature and proves nothing."""
    rpc, signature, last_valid = landed_and_expired
    watcher = SignatureWatcher(rpc, poll_s=0.05)
    watcher.block_height = last_valid + 1_000  # what the poller saw for other signatures
    watcher.start()
    try:
        outcome = await asyncio.wait_for(_follow(watcher, signature, last_valid), 10)
    finally:
        await watcher.stop()
    assert outcome.landed and outcome.error_code is None, outcome


async def test_a_landed_transaction_the_status_cache_forgot_is_found_in_history(landed_and_expired):
    """The poller asks the cheap status cache, which forgot it; "not landed" needs history search."""
    rpc, signature, last_valid = landed_and_expired
    watcher = SignatureWatcher(rpc, poll_s=0.05)
    watcher.start()
    try:
        outcome = await asyncio.wait_for(_follow(watcher, signature, last_valid), 10)
    finally:
        await watcher.stop()
    assert outcome.landed and outcome.slot is not None, outcome


async def test_a_transaction_that_never_landed_is_called_expired_once_its_blockhash_is(stack):
    rpc = SolanaRpc(stack.endpoints["rpc"])
    watcher = SignatureWatcher(rpc, poll_s=0.05)
    watcher.start()
    try:
        height = await rpc.block_height()
        never = str(Keypair().sign_message(b"never sent"))
        outcome = await asyncio.wait_for(_follow(watcher, never, height + 5), 20)
        assert not outcome.landed and outcome.error_code == "BLOCKHASH_EXPIRED", outcome
        assert await rpc.block_height() > height + 5
    finally:
        await watcher.stop()
        await rpc.close()


async def test_no_answer_from_the_chain_is_never_a_verdict(stack):
    """The RPC fails every status read: confirm neither says landed nor expired, it gives up the
    attempt (the workflow retries it) once the chain has been silent for a while."""
    from executor import confirm

    rpc = SolanaRpc(stack.endpoints["rpc"])
    watcher = SignatureWatcher(rpc, poll_s=0.05)
    height = await rpc.block_height()
    watcher.start()
    silence, confirm.CHAIN_SILENCE_S = confirm.CHAIN_SILENCE_S, 1.0
    await stack.faults({"reads": {"reject": 1.0}})
    try:
        with pytest.raises(confirm.ChainUnavailable):
            await asyncio.wait_for(_follow(watcher, str(Keypair().sign_message(b"x")), height - 1), 10)
    finally:
        confirm.CHAIN_SILENCE_S = silence
        await stack.clear_faults()
        await watcher.stop()
        await rpc.close()


async def test_no_copy_is_resent_once_the_plan_may_not_send(stack):
    """Rebroadcasts stop when the kill switch or the deadline says so."""
    rpc = SolanaRpc(stack.endpoints["rpc"])
    watcher = SignatureWatcher(rpc, poll_s=0.05)
    watcher.start()
    sent = []
    allowed = True

    async def rebroadcast() -> None:
        sent.append(time.monotonic())

    try:
        height = await rpc.block_height()
        never = str(Keypair().sign_message(b"dropped"))
        task = asyncio.create_task(_follow(watcher, never, height + 60, rebroadcast=rebroadcast, rebroadcast_s=0.1, may_resend=lambda: allowed))
        await asyncio.sleep(0.6)
        assert len(sent) >= 3
        allowed = False
        await asyncio.sleep(0.1)
        count = len(sent)
        await asyncio.sleep(0.6)
        assert len(sent) == count, "resent while the plan may not send"
        task.cancel()
    finally:
        await watcher.stop()
        await rpc.close()

