"""Tests for localnet.tpu.TpuQuicServer against a real aioquic client over loopback.

Each test starts its own server on an ephemeral port, so limits never leak between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import AlertDescription
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import DNSName, SubjectAlternativeName
from cryptography.x509.oid import NameOID
from solders.keypair import Keypair

from localnet.tpu import PACKET_DATA_SIZE, TpuQuicServer, node_certificate

HOST = "127.0.0.1"
TIMEOUT = 3.0  # seconds; every wait in these tests is bounded by this


# --- client-side helper ------------------------------------------------------------------


class TpuTestClient(QuicConnectionProtocol):
    """A minimal TPU client: one transaction per unidirectional stream, then FIN."""

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.terminated: asyncio.Future[events.ConnectionTerminated] = (
            asyncio.get_running_loop().create_future()
        )

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated) and not self.terminated.done():
            self.terminated.set_result(event)
        super().quic_event_received(event)

    def send_transactions(self, *raws: bytes) -> None:
        """Open one uni stream per transaction, write it with FIN, flush them together."""
        for raw in raws:
            stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
            self._quic.send_stream_data(stream_id, raw, end_stream=True)
        self.transmit()

    async def wait_terminated(self) -> events.ConnectionTerminated:
        return await asyncio.wait_for(asyncio.shield(self.terminated), TIMEOUT)


@contextlib.asynccontextmanager
async def tpu_client(
    server: TpuQuicServer,
    keypair: Keypair | None = None,
    *,
    certificate: bool = True,
    wait_connected: bool = True,
    configure: Callable[[QuicConfiguration], None] | None = None,
) -> AsyncIterator[TpuTestClient]:
    """Connect to ``server`` as a TPU client bound to 127.0.0.1, with a self-signed Ed25519
    client certificate (unless ``certificate`` is False); the server cert is not verified.
    ``configure`` may alter the client configuration last, to misbehave on purpose."""
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=["solana-tpu"],
        verify_mode=ssl.CERT_NONE,
        server_name="localhost",
        idle_timeout=5.0,
    )
    if certificate:
        configuration.certificate, configuration.private_key = node_certificate(
            keypair or Keypair()
        )
    if configure is not None:
        configure(configuration)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: TpuTestClient(QuicConnection(configuration=configuration)),
        local_addr=(HOST, 0),
    )
    try:
        client.connect((HOST, server.port))
        if wait_connected:
            await asyncio.wait_for(client.wait_connected(), TIMEOUT)
        yield client
    finally:
        client.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        transport.close()


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


async def refusal(
    server: TpuQuicServer,
    *,
    certificate: bool = True,
    configure: Callable[[QuicConfiguration], None] | None = None,
) -> events.ConnectionTerminated:
    """Connect, and return how the server ended the connection. Doesn't wait for
    "connected": a TLS 1.3 client finishes its side of the handshake before the server has
    checked the client's certificate, and a refusal may come just after the handshake."""
    async with tpu_client(
        server, certificate=certificate, wait_connected=False, configure=configure
    ) as client:
        return await client.wait_terminated()


def crypto_error(alert: AlertDescription) -> int:
    """The QUIC transport error code carrying a TLS alert (RFC 9001 section 4.8)."""
    return QuicErrorCode.CRYPTO_ERROR + alert


@dataclass
class Harness:
    server: TpuQuicServer
    received: list[tuple[bytes, str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_server(
    on_transaction: Callable[[bytes, str], None] | None = None, **limits: float
) -> AsyncIterator[Harness]:
    received: list[tuple[bytes, str]] = []
    callback = on_transaction or (lambda raw, peer: received.append((raw, peer)))
    server = TpuQuicServer(Keypair(), callback, **limits)  # type: ignore[arg-type]
    await server.start()
    try:
        yield Harness(server, received)
    finally:
        await server.stop()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_server() as h:
        yield h


# --- tests ---------------------------------------------------------------------------------


def test_certificate_carries_node_identity() -> None:
    keypair = Keypair()
    cert, key = node_certificate(keypair)
    public = cert.public_key()
    assert isinstance(public, Ed25519PublicKey)
    assert public.public_bytes(Encoding.Raw, PublicFormat.Raw) == bytes(keypair.pubkey())
    assert key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == bytes(keypair.pubkey())
    assert cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Solana node"
    san = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    assert san.get_values_for_type(DNSName) == ["localhost"]
    assert cert.not_valid_before_utc.year == 1970 and cert.not_valid_after_utc.year == 4096


async def test_transaction_reaches_callback_with_peer_identity(harness: Harness) -> None:
    keypair = Keypair()
    small, largest = os.urandom(215), os.urandom(PACKET_DATA_SIZE)
    async with tpu_client(harness.server, keypair) as client:
        client.send_transactions(small)
        await eventually(lambda: len(harness.received) == 1)
        client.send_transactions(largest)
        await eventually(lambda: len(harness.received) == 2)
    assert harness.received == [(small, str(keypair.pubkey())), (largest, str(keypair.pubkey()))]
    stats = harness.server.stats()
    assert stats["connections_accepted"] == 1
    assert stats["streams_received"] == 2 and stats["transactions"] == 2


async def test_transport_parameters_match_agave_unstaked_limits(harness: Harness) -> None:
    async with tpu_client(harness.server) as client:
        quic = client._quic
        assert quic._remote_max_streams_uni == 128
        assert quic._remote_max_streams_bidi == 0
        assert quic._remote_max_stream_data_uni == PACKET_DATA_SIZE
        assert quic._remote_max_datagram_frame_size is None  # datagrams not offered
        assert quic.tls.alpn_negotiated == "solana-tpu"
        assert harness.server.stats()["connections_open"] == 1


async def test_fifty_concurrent_streams_on_one_connection(harness: Harness) -> None:
    keypair = Keypair()
    payloads = [os.urandom(100 + i * 20) for i in range(50)]
    async with tpu_client(harness.server, keypair) as client:
        client.send_transactions(*payloads)
        await eventually(lambda: len(harness.received) == 50)
    assert sorted(raw for raw, _ in harness.received) == sorted(payloads)
    assert {peer for _, peer in harness.received} == {str(keypair.pubkey())}
    assert harness.server.stats()["connections_accepted"] == 1


async def test_oversized_stream_closes_connection_with_invalid_stream(harness: Harness) -> None:
    async with tpu_client(harness.server) as client:
        client.send_transactions(os.urandom(PACKET_DATA_SIZE + 1))
        closed = await client.wait_terminated()
    # An application close (frame_type None) with agave's CONNECTION_CLOSE_CODE_INVALID_STREAM.
    assert (closed.error_code, closed.frame_type, closed.reason_phrase) == (
        5,
        None,
        "invalid_stream",
    )
    stats = harness.server.stats()
    assert stats["oversized_streams"] == 1 and stats["transactions"] == 0
    assert harness.received == []
    await eventually(lambda: harness.server.stats()["connections_open"] == 0)


async def test_empty_stream_closes_connection_with_invalid_stream(harness: Harness) -> None:
    async with tpu_client(harness.server) as client:
        client.send_transactions(b"")
        closed = await client.wait_terminated()
    assert (closed.error_code, closed.reason_phrase) == (5, "invalid_stream")
    assert harness.server.stats()["empty_streams"] == 1
    assert harness.received == []


async def test_client_without_certificate_is_refused(harness: Harness) -> None:
    closed = await refusal(harness.server, certificate=False)
    assert closed.error_code == crypto_error(AlertDescription.certificate_required)
    await eventually(lambda: harness.server.stats()["connections_refused"] == 1)
    assert harness.server.stats()["connections_accepted"] == 0


async def test_stream_credit_is_replenished_beyond_max_uni_streams() -> None:
    async with running_server(max_uni_streams=4) as h:
        payloads = [os.urandom(64) for _ in range(40)]
        async with tpu_client(h.server) as client:
            assert client._quic._remote_max_streams_uni == 4
            client.send_transactions(*payloads)  # aioquic queues streams beyond the limit
            await eventually(lambda: len(h.received) == 40)
        assert sorted(raw for raw, _ in h.received) == sorted(payloads)


async def test_client_must_hold_its_certificate_key(harness: Harness) -> None:
    def sign_with_another_key(configuration: QuicConfiguration) -> None:
        _, configuration.private_key = node_certificate(Keypair())

    closed = await refusal(harness.server, configure=sign_with_another_key)
    # aioquic checks the CertificateVerify signature against the certificate's key.
    assert closed.error_code == crypto_error(AlertDescription.decrypt_error)
    assert harness.server.stats()["connections_accepted"] == 0


async def test_non_ed25519_client_certificate_is_refused(harness: Harness) -> None:
    def use_ecdsa_certificate(configuration: QuicConfiguration) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a node")])
        now = datetime.datetime.now(datetime.timezone.utc)
        configuration.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        configuration.private_key = key

    closed = await refusal(harness.server, configure=use_ecdsa_certificate)
    assert closed.error_code == crypto_error(AlertDescription.unsupported_certificate)
    assert harness.server.stats()["connections_accepted"] == 0


async def test_wrong_alpn_is_refused(harness: Harness) -> None:
    def use_h3(configuration: QuicConfiguration) -> None:
        configuration.alpn_protocols = ["h3"]

    closed = await refusal(harness.server, configure=use_h3)
    assert closed.error_code == crypto_error(AlertDescription.no_application_protocol)
    assert harness.server.stats()["connections_accepted"] == 0


async def test_garbage_datagrams_do_not_crash_server(harness: Harness) -> None:
    # A well-formed QUIC v1 long header claiming to be an Initial, with a garbage payload.
    fake_initial = b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(1208)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        for size in (0, 1, 20, 1199, 1200, 1500):
            sock.sendto(os.urandom(size), (HOST, harness.server.port))
        sock.sendto(fake_initial, (HOST, harness.server.port))
        await asyncio.sleep(0.05)
    async with tpu_client(harness.server) as client:
        client.send_transactions(b"still alive")
        await eventually(lambda: len(harness.received) == 1)


async def test_bidirectional_stream_is_refused(harness: Harness) -> None:
    async with tpu_client(harness.server) as client:
        # The server grants 0 bidi streams, so a well-behaved aioquic client would block
        # forever; pretend it was granted one, as a misbehaving client would.
        client._quic._remote_max_streams_bidi = 1
        stream_id = client._quic.get_next_available_stream_id(is_unidirectional=False)
        client._quic.send_stream_data(stream_id, os.urandom(100), end_stream=True)
        client.transmit()
        closed = await client.wait_terminated()
    assert closed.error_code == QuicErrorCode.STREAM_LIMIT_ERROR
    assert harness.server.stats()["bidi_refused"] == 1
    assert harness.received == []
    await eventually(lambda: harness.server.stats()["connections_open"] == 0)


async def test_ninth_new_connection_within_a_minute_is_refused() -> None:
    async with running_server() as h:  # agave defaults: 8 new connections per IP per minute
        for _ in range(8):
            async with tpu_client(h.server) as client:
                client.send_transactions(b"tx")
        await eventually(lambda: len(h.received) == 8)
        closed = await refusal(h.server)
        assert (closed.error_code, closed.reason_phrase) == (2, "disallowed")
        stats = h.server.stats()
        assert stats["connections_accepted"] == 8 and stats["connections_refused"] == 1


async def test_connections_per_ip_limit_refuses_with_too_many() -> None:
    async with running_server(max_connections_per_ip=2) as h:
        async with tpu_client(h.server) as first, tpu_client(h.server) as second:
            closed = await refusal(h.server)
            assert (closed.error_code, closed.reason_phrase) == (4, "too_many")
            first.send_transactions(b"one")
            second.send_transactions(b"two")
            await eventually(lambda: len(h.received) == 2)
        assert h.server.stats()["connections_refused"] == 1


async def test_raising_callback_does_not_kill_server() -> None:
    received: list[bytes] = []

    def flaky(raw: bytes, peer: str) -> None:
        if raw == b"boom":
            raise RuntimeError("consumer bug")
        received.append(raw)

    async with running_server(flaky) as h:
        async with tpu_client(h.server) as client:
            client.send_transactions(b"boom")
            await eventually(lambda: h.server.stats()["callback_errors"] == 1)
            client.send_transactions(b"after")
            await eventually(lambda: received == [b"after"])
        async with tpu_client(h.server) as client:  # and new connections still work
            client.send_transactions(b"later")
            await eventually(lambda: received == [b"after", b"later"])
        assert h.server.stats()["transactions"] == 3


async def test_stop_closes_connections_and_releases_port() -> None:
    server = TpuQuicServer(Keypair(), lambda raw, peer: None)
    await server.start()
    port = server.port
    assert port != 0 and server.address == f"{HOST}:{port}"
    async with tpu_client(server) as client:
        await server.stop()
        closed = await client.wait_terminated()
        assert closed.error_code == QuicErrorCode.NO_ERROR
    assert server.stats()["connections_open"] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, port))  # would raise EADDRINUSE if the server still held it
