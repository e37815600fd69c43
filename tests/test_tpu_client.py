"""venue.tpu against a real 3-validator local cluster, over real QUIC (no stubs).

The cluster runs on its own thread (ClusterThread) with 40 ms slots; each leader holds 4
slots, so leaders rotate every 160 ms. Tests that need every validator in the send set use
fanout_slots=12 (three leader windows).
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID, NameOID
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from venue.tpu import LeaderTracker, TpuClient, node_certificate
from localnet.cluster import ClusterConfig, ClusterThread

SOL = 1_000_000_000
SLOT_MS = 40
ALL_LEADERS = 12  # fanout slots covering the 3 validators' 4-slot windows


@pytest.fixture(scope="module")
def cluster():
    config = ClusterConfig.auto_ports(slot_ms=SLOT_MS, validators=3, tpu_new_connections_per_minute=10_000)
    with ClusterThread(config) as running:
        yield running


@pytest.fixture(scope="module")
def admin(cluster):
    with httpx.Client(base_url=cluster.endpoints()["admin"], timeout=10) as client:
        yield client


@pytest.fixture
async def rpc(cluster):
    async with AsyncClient(cluster.endpoints()["rpc"], commitment=Confirmed) as client:
        yield client


@pytest.fixture(scope="module")
def payer(cluster) -> Keypair:
    wallet = Keypair()
    cluster.call(lambda c: c.fund(wallet.pubkey(), 10 * SOL))
    return wallet


@asynccontextmanager
async def tpu_client(cluster, **kwargs) -> AsyncIterator[TpuClient]:
    endpoints = cluster.endpoints()
    client = TpuClient(endpoints["rpc"], endpoints["ws"], **kwargs)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def transfer_bytes(rpc: AsyncClient, payer: Keypair, lamports: int = 1_000_000) -> tuple[bytes, Signature]:
    blockhash: Hash = (await rpc.get_latest_blockhash()).value.blockhash
    ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=lamports))
    tx = VersionedTransaction(MessageV0.try_compile(payer.pubkey(), [ix], [], blockhash), [payer])
    return bytes(tx), tx.signatures[0]


async def landed(rpc: AsyncClient, signature: Signature) -> bool:
    """Landed without error (a fresh recipient needs at least the rent-exempt minimum)."""
    status = (await rpc.get_signature_statuses([signature])).value[0]
    return status is not None and status.err is None


async def wait_landed(rpc: AsyncClient, signature: Signature, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await landed(rpc, signature):
        if time.monotonic() > deadline:
            pytest.fail(f"{signature} did not land in {timeout}s")
        await asyncio.sleep(SLOT_MS / 1000)


async def eventually(predicate, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached in {timeout}s")
        await asyncio.sleep(0.02)


def validator_identities(cluster) -> list[str]:
    return cluster.call(lambda c: [str(v.identity.pubkey()) for v in c.validators])


def server_accepted(admin: httpx.Client) -> int:
    return sum(v.get("connections_accepted", 0) for v in admin.get("/stats").json()["tpu"])


# --- leader tracking -------------------------------------------------------------------------


async def test_tracker_follows_slots_and_schedule(cluster):
    tracker = LeaderTracker(cluster.endpoints()["rpc"], cluster.endpoints()["ws"], fanout_slots=8)
    await tracker.start()
    try:
        await eventually(lambda: tracker.slot_source == "ws", what="websocket subscription")
        first = tracker.current_slot
        await eventually(lambda: tracker.current_slot >= first + 3, what="slot notifications")
        slot = tracker.current_slot
        upcoming = tracker.upcoming()
        expected = cluster.call(lambda c: [str(c.leader_for(s)) for s in range(slot, slot + 8)])
        assert [leader for leader, _ in upcoming] == list(dict.fromkeys(expected))
        ports = cluster.call(lambda c: {str(v.identity.pubkey()): v.tpu_port for v in c.validators})
        assert all(addr == ("127.0.0.1", ports[leader]) for leader, addr in upcoming)
    finally:
        await tracker.stop()


async def test_tracker_falls_back_to_polling_without_websocket(cluster):
    tracker = LeaderTracker(cluster.endpoints()["rpc"], "ws://127.0.0.1:9/", fanout_slots=4)
    await tracker.start()
    try:
        await eventually(lambda: tracker.slot_source == "poll", what="poll fallback")
        first = tracker.current_slot
        await eventually(lambda: tracker.current_slot >= first + 3, what="polled slots")
        assert tracker.upcoming()
    finally:
        await tracker.stop()


# --- (a) a transfer sent over QUIC lands -----------------------------------------------------


async def test_send_lands_and_reports_upcoming_leaders(cluster, rpc, payer):
    async with tpu_client(cluster, fanout_slots=8) as client:
        raw, signature = await transfer_bytes(rpc, payer)
        slot_before = client.tracker.current_slot
        report = await client.send(raw)
        slot_after = client.tracker.current_slot
        assert report.leaders, report
        assert len(set(report.leaders)) == len(report.leaders)
        scheduled = (await rpc.get_slot_leaders(slot_before, slot_after - slot_before + 8)).value
        assert set(report.leaders) <= {str(p) for p in scheduled}
        assert report.delivered == len(report.leaders) and report.failed == 0, report
        await wait_landed(rpc, signature)
        delivered = client.registry.get_sample_value(
            "executor_tpu_sends_total", {"leader": report.leaders[0], "outcome": "delivered"}
        )
        assert delivered and delivered >= 1
        assert client.registry.get_sample_value("executor_tpu_stream_write_ms_count") >= report.delivered


# --- (b) connections are reused --------------------------------------------------------------


async def test_connections_are_reused_across_sends(cluster, rpc, admin, payer):
    async with tpu_client(cluster, fanout_slots=ALL_LEADERS) as client:
        raw, _ = await transfer_bytes(rpc, payer)
        assert (await client.send(raw)).delivered == 3  # all three leaders, connections warm
        opens = client.registry.get_sample_value("executor_tpu_connection_opens_total")
        accepted = server_accepted(admin)
        assert opens == 3
        for _ in range(20):
            report = await client.send(raw)  # identical bytes: processed at most once
            assert report.delivered == 3, report
        assert client.registry.get_sample_value("executor_tpu_connection_opens_total") == opens
        assert server_accepted(admin) == accepted
        assert client.registry.get_sample_value("executor_tpu_connection_failures_total") == 0


# --- (c) resending through injected loss -----------------------------------------------------


async def test_resend_through_fifty_percent_tpu_loss(cluster, rpc, admin, payer):
    admin.put("/faults", json={"tpu": {"drop": 0.5}, "seed": 1}).raise_for_status()
    try:
        async with tpu_client(cluster, fanout_slots=4) as client:
            raw, signature = await transfer_bytes(rpc, payer)
            last_valid = (await rpc.get_latest_blockhash()).value.last_valid_block_height
            sends = 0
            while not await landed(rpc, signature):
                assert (await rpc.get_block_height()).value <= last_valid, "blockhash expired before landing"
                report = await client.send(raw)
                sends += 1
                assert report.delivered >= 1, report
                await asyncio.sleep(0.1)
        record = admin.get("/transactions", params={"signature": str(signature)}).json()["transactions"][0]
        assert record["landedSlot"] is not None and record["channels"] == ["tpu"]
        assert record["timesReceived"] >= 1 and sends >= 1
        assert admin.get("/stats").json()["counters"].get("tpu.drop", 0) >= 1
    finally:
        admin.put("/faults", json={"tpu": {"drop": 0, "delay_ms": 0, "rate_limit": 0, "reject": 0}}).raise_for_status()


async def test_a_transaction_given_up_on_is_reset_not_retransmitted(cluster, rpc, admin, payer):
    """Issue 20: a send that timed out left its QUIC stream to be retransmitted on its own, after the
    sender gave up on it (and after a halt said nothing more goes out). It is reset (RESET_STREAM)."""
    async with tpu_client(cluster, fanout_slots=ALL_LEADERS, timeout_s=0.5) as client:
        raw, _ = await transfer_bytes(rpc, payer)
        assert (await client.send(raw)).delivered == 3  # connections warm
        connections = [entry.connection for entry in client.cache._entries.values()]
        for connection in connections:  # the network loses every packet from here on: nothing is ACKed
            connection._transport.sendto = lambda *args, **kwargs: None
        lost, _ = await transfer_bytes(rpc, payer, lamports=1_000_001)
        report = await client.send(lost)
        assert report.delivered == 0 and set(dict(report.outcomes).values()) == {"timeout"}, report
        assert sum(c.streams_reset for c in connections) == 3, "every abandoned stream reset"
        assert all(c.pending == 0 for c in connections), "nothing left to retransmit"


# --- (d) a dead leader does not stall the others ---------------------------------------------


async def test_dead_leader_is_skipped_without_stalling(cluster, rpc, admin, payer):
    timeout_s = 1.0
    dead = validator_identities(cluster)[1]
    async with tpu_client(cluster, fanout_slots=ALL_LEADERS, timeout_s=timeout_s) as client:
        raw, signature = await transfer_bytes(rpc, payer)
        assert (await client.send(raw)).delivered == 3
        dead_addr = client.tracker.leader_address(dead)
        admin.post("/validators/1/tpu", json={"open": False}).raise_for_status()
        try:
            report = await client.send(raw)
            assert report.elapsed_ms < (timeout_s + 0.3) * 1000, report
            assert report.delivered == 2 and report.failed == 1, report
            assert dict(report.outcomes)[dead] != "delivered"
            await wait_landed(rpc, signature)

            # Once its connect has failed, the dead leader is skipped at once (backoff).
            await eventually(lambda: client.cache.failures >= 1, timeout=3.0, what="connect failure")
            report = await client.send(raw)
            assert report.elapsed_ms < 200, report
            assert report.delivered == 2 and dict(report.outcomes)[dead] == "backoff", report
            assert client.registry.get_sample_value("executor_tpu_connection_failures_total") >= 1
        finally:
            admin.post("/validators/1/tpu", json={"open": True}).raise_for_status()
        # Reopened on the same port: the backoff retry reconnects in the background.
        await eventually(lambda: dead_addr in client.cache.addresses(), timeout=5.0, what="reconnect")
        assert (await client.send(raw)).delivered == 3


# --- (e) the client certificate is the node identity -----------------------------------------


async def test_client_certificate_carries_the_identity_key(cluster):
    identity, wallet = Keypair(), Keypair()
    certificate, private_key = node_certificate(identity)
    public_key = certificate.public_key()
    assert isinstance(public_key, Ed25519PublicKey)
    raw_key = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert raw_key == bytes(identity.pubkey())
    assert raw_key != bytes(wallet.pubkey())
    assert private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == raw_key
    assert certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Solana node"
    assert len(certificate.subject) == 0
    assert certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).critical
    endpoints = cluster.endpoints()
    assert TpuClient(endpoints["rpc"], endpoints["ws"], identity=identity).identity_pubkey == str(identity.pubkey())
    fresh = TpuClient(endpoints["rpc"], endpoints["ws"]).identity_pubkey
    assert Pubkey.from_string(fresh) not in (identity.pubkey(), wallet.pubkey())


# --- (f) oversized transactions are refused before any stream --------------------------------


async def test_oversized_transaction_is_refused(cluster, admin):
    async with tpu_client(cluster, fanout_slots=ALL_LEADERS) as client:
        oversized_before = sum(v.get("oversized_streams", 0) for v in admin.get("/stats").json()["tpu"])
        with pytest.raises(ValueError, match="1232"):
            await client.send(b"\x01" * 1233)
        with pytest.raises(ValueError):
            await client.send(b"")
        assert client.registry.get_sample_value("executor_tpu_sends_total", {"leader": validator_identities(cluster)[0], "outcome": "delivered"}) is None
        assert sum(v.get("oversized_streams", 0) for v in admin.get("/stats").json()["tpu"]) == oversized_before
