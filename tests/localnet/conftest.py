"""One local cluster per test session, on its own thread, driven only through real clients."""
from __future__ import annotations

import asyncio
import ssl
import time

import httpx
import pytest
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction

from localnet.cluster import ClusterConfig, ClusterThread
from localnet.faults import no_faults
from localnet.tpu import node_certificate

SOL = 1_000_000_000
SLOT_MS = 40


@pytest.fixture(scope="session")
def cluster():
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=SLOT_MS, validators=2, tpu_new_connections_per_minute=10_000)) as running:
        yield running


@pytest.fixture
async def rpc(cluster):
    async with AsyncClient(cluster.endpoints()["rpc"], commitment=Confirmed) as client:
        yield client


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def admin(cluster):
    """Admin endpoint client; fault settings are reset after each test."""
    base = cluster.endpoints()["admin"]
    with httpx.Client(base_url=base, timeout=10) as client:
        yield client
        client.put("/faults", json=no_faults())


def funded_wallet(cluster, sol: float = 10) -> Keypair:
    wallet = Keypair()
    cluster.call(lambda c: c.fund(wallet.pubkey(), int(sol * SOL)))
    return wallet


def sign(payer: Keypair, instructions: list[Instruction], blockhash: Hash, signers: list[Keypair] | None = None) -> VersionedTransaction:
    return VersionedTransaction(MessageV0.try_compile(payer.pubkey(), instructions, [], blockhash), signers or [payer])


def transfer_tx(payer: Keypair, to: Pubkey, lamports: int, blockhash: Hash) -> VersionedTransaction:
    return sign(payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=lamports))], blockhash)


async def latest_blockhash(rpc: AsyncClient) -> Hash:
    return (await rpc.get_latest_blockhash()).value.blockhash


async def wait_status(rpc: AsyncClient, signature: Signature, level: str = "confirmed", timeout: float = 10.0):
    """Poll getSignatureStatuses until the signature reaches `level`; returns the status."""
    order = ["processed", "confirmed", "finalized"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await rpc.get_signature_statuses([signature])).value[0]
        if status is not None and order.index(str(status.confirmation_status).split(".")[-1].lower()) >= order.index(level):
            return status
        await asyncio.sleep(SLOT_MS / 1000)
    raise TimeoutError(f"{signature} did not reach {level} in {timeout}s")


async def wait_slots(rpc: AsyncClient, slots: int) -> None:
    start = (await rpc.get_slot()).value
    while (await rpc.get_slot()).value < start + slots:
        await asyncio.sleep(SLOT_MS / 1000)


async def quic_send(address: str, *raws: bytes, identity: Keypair | None = None, expect_close: bool = False) -> None:
    """Send each transaction on its own unidirectional stream of one QUIC connection, as a TPU client does.

    With `expect_close`, wait for the server to close the connection instead of pinging.
    """
    host, port = address.rsplit(":", 1)
    certificate, key = node_certificate(identity or Keypair())
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["solana-tpu"], verify_mode=ssl.CERT_NONE)
    configuration.certificate, configuration.private_key = certificate, key
    async with connect(host, int(port), configuration=configuration) as client:
        quic = client._quic
        for raw in raws:
            stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
            quic.send_stream_data(stream_id, raw, end_stream=True)
        client.transmit()
        if expect_close:
            await asyncio.wait_for(client.wait_closed(), 3)
        else:
            await client.ping()  # the acknowledged ping proves the streams were delivered
