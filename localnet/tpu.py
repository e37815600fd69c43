"""TPU-over-QUIC server for the local cluster, behaving like an agave validator's TPU.

Executors send transactions to a validator's TPU as raw bytes, one per client-initiated
unidirectional QUIC stream, over a mutually authenticated TLS 1.3 connection whose
certificates carry the peers' Ed25519 node identities. This module reproduces what agave
(anza-xyz/agave ``streamer/src/quic.rs`` and ``streamer/src/nonblocking/quic.rs``) does
for an *unstaked* peer, so the project's TPU client is exercised against the same rules it
meets on a real cluster: mandatory client certificates, one transaction per stream, streams
of at most ``PACKET_DATA_SIZE`` bytes, no bidirectional streams or datagrams, and per-IP
connection limits, with agave's application close codes.

aioquic is a sans-I/O QUIC stack; its ready-made ``aioquic.asyncio.serve`` builds plain
``QuicConnection`` objects, which cannot require client certificates nor set the stream
limits agave uses. So this module runs its own small UDP endpoint (modelled on aioquic's
``QuicServer``, without Retry) creating ``_TpuQuicConnection`` objects, and narrows aioquic
where it has to (see ``_MandatoryClientAuthTls`` and ``_TpuQuicConnection``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import cast

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import (
    Limit,
    NetworkAddress,
    QuicConnection,
    stream_is_client_initiated,
    stream_is_unidirectional,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from venue import PACKET_DATA_SIZE
from venue.tpu.connections import node_certificate

from .qos import Qos, QosState

__all__ = ["TpuQuicServer", "node_certificate"]

logger = logging.getLogger("localnet.tpu")

# ALPN_TPU_PROTOCOL_ID, streamer/src/nonblocking/quic.rs.
ALPN_TPU_PROTOCOL_ID = "solana-tpu"

# PACKET_DATA_SIZE (venue.protocol): Agave sets it as the per-stream receive window
# (configure_server, streamer/src/quic.rs) and rejects a stream whose accumulated size
# exceeds it (handle_chunks, streamer/src/nonblocking/quic.rs).

# QUIC_MAX_UNSTAKED_CONCURRENT_STREAMS, solana-quic-definitions: uni streams an unstaked
# peer may have open at once.
QUIC_MAX_UNSTAKED_CONCURRENT_STREAMS = 128

# DEFAULT_MAX_QUIC_CONNECTIONS_PER_PEER, streamer/src/quic.rs; unstaked peers are keyed by
# IP address in the connection table (ConnectionTableKey::IP).
DEFAULT_MAX_QUIC_CONNECTIONS_PER_PEER = 8

# DEFAULT_MAX_CONNECTIONS_PER_IPADDR_PER_MINUTE, streamer/src/quic.rs.
DEFAULT_MAX_CONNECTIONS_PER_IPADDR_PER_MINUTE = 8

# Idle timeout in seconds (configure_server: max_idle_timeout(QUIC_MAX_TIMEOUT)). The value
# has changed across agave releases; QUIC negotiates the smaller of the two peers' values,
# and current Solana TPU clients use 10 s.
QUIC_MAX_TIMEOUT = 10.0

# Application close codes and reasons, streamer/src/nonblocking/quic.rs.
CONNECTION_CLOSE_CODE_DISALLOWED = 2  # per-IP new-connection rate limit (setup_connection)
CONNECTION_CLOSE_REASON_DISALLOWED = "disallowed"
CONNECTION_CLOSE_CODE_TOO_MANY = 4  # too many connections from one peer (ConnectionTable)
CONNECTION_CLOSE_REASON_TOO_MANY = "too_many"
CONNECTION_CLOSE_CODE_INVALID_STREAM = 5  # oversized or empty stream (handle_connection)
CONNECTION_CLOSE_REASON_INVALID_STREAM = "invalid_stream"

_DISALLOWED = (CONNECTION_CLOSE_CODE_DISALLOWED, CONNECTION_CLOSE_REASON_DISALLOWED)
_TOO_MANY = (CONNECTION_CLOSE_CODE_TOO_MANY, CONNECTION_CLOSE_REASON_TOO_MANY)
_INVALID_STREAM = (CONNECTION_CLOSE_CODE_INVALID_STREAM, CONNECTION_CLOSE_REASON_INVALID_STREAM)

# Window of the per-IP new-connection limit, in seconds ("per minute").
_RATE_WINDOW = 60.0

TransactionCallback = Callable[[bytes, str], None]


def _pubkey_of(certificate: x509.Certificate) -> str | None:
    """Return the base58 node identity in a peer certificate, or None if not Ed25519."""
    try:
        public_key = certificate.public_key()
    except Exception:  # unsupported or malformed key: not a Solana identity
        return None
    if not isinstance(public_key, Ed25519PublicKey):
        return None
    return str(Pubkey(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)))


class _AlertCertificateRequired(tls.Alert):
    """TLS 1.3 certificate_required alert (RFC 8446 section 4.4.2.4); aioquic lacks a class."""

    description = tls.AlertDescription.certificate_required


class _MandatoryClientAuthTls(tls.Context):
    """aioquic's TLS server context, made to insist on an Ed25519 client certificate.

    Agave's rustls server config uses a client verifier whose ``client_auth_mandatory()``
    is true but which accepts any (self-signed) chain. aioquic's server only *requests* a
    certificate when the test-only flag ``_request_client_certificate`` is set, and then
    continues without client authentication if the client answers with an empty
    Certificate message (RFC 8446 allows that). This subclass turns the empty answer into
    a certificate_required alert, and refuses keys that are not Ed25519 (no node identity).
    The chain is never verified (server ``verify_mode`` is CERT_NONE), but aioquic still
    checks the CertificateVerify signature against the certificate's key in
    ``_server_handle_certificate_verify``, so the client proves it holds the identity key.
    """

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate(input_buf)
        if self._peer_certificate is None:
            raise _AlertCertificateRequired("a client certificate is mandatory")
        if _pubkey_of(self._peer_certificate) is None:
            raise tls.AlertUnsupportedCertificate("client certificate key is not Ed25519")


class _TpuQuicConnection(QuicConnection):
    """A server QuicConnection with agave's transport limits and mandatory client auth.

    aioquic hard-codes 128 for both ``initial_max_streams_*`` transport parameters and has
    no option to request client certificates, so both are set here, before ``_initialize``
    serializes the transport parameters and builds the TLS context.
    """

    def __init__(
        self, *, max_uni_streams: int, on_bidi_stream: Callable[[], None], **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        # Whole new Limits, not just .value: a Limit's "sent" starts equal to its initial
        # value (what the transport parameters announce), and a stale "sent" would stop
        # aioquic from ever granting more streams with MAX_STREAMS.
        self._local_max_streams_uni = Limit(
            frame_type=QuicFrameType.MAX_STREAMS_UNI, name="max_streams_uni", value=max_uni_streams
        )
        # "disable bidi & datagrams": MAX_CONCURRENT_BIDI_STREAMS = 0 (configure_server).
        # A peer opening one violates the limit; aioquic, like quinn, then closes the
        # connection with the transport error STREAM_LIMIT_ERROR.
        self._local_max_streams_bidi = Limit(
            frame_type=QuicFrameType.MAX_STREAMS_BIDI, name="max_streams_bidi", value=0
        )
        self._on_bidi_stream = on_bidi_stream

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        # aioquic builds a plain tls.Context inside _initialize; swapping in the subclass
        # (which adds no state) is narrower than copying _initialize. Session tickets stay
        # disabled (no ticket handlers) because PSK resumption would skip client auth.
        self.tls.__class__ = _MandatoryClientAuthTls
        self.tls._request_client_certificate = True

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        if (
            stream_is_client_initiated(stream_id)
            and not stream_is_unidirectional(stream_id)
            and stream_id not in self._streams
        ):
            self._on_bidi_stream()  # super() raises STREAM_LIMIT_ERROR: the limit is 0
        return super()._get_or_create_stream(frame_type, stream_id)

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The verified-possession client certificate (aioquic keeps it private)."""
        return self.tls._peer_certificate


@dataclass
class _Stats:
    connections_accepted: int = 0
    connections_refused: int = 0
    connections_open: int = 0
    streams_received: int = 0
    transactions: int = 0
    oversized_streams: int = 0
    empty_streams: int = 0
    bidi_refused: int = 0
    callback_errors: int = 0


class _TpuConnectionProtocol(QuicConnectionProtocol):
    """One peer connection: reassembles uni streams into transactions, enforces agave's rules."""

    def __init__(self, quic: _TpuQuicConnection, server: TpuQuicServer, ip: str) -> None:
        super().__init__(quic)
        self._server = server
        self.ip = ip
        self.peer: str | None = None
        self.accepted = False  # handshake done and admitted by the per-IP limits
        self.released = False  # per-IP slot given back (set once)
        self.refused = False  # closed by _admit; already counted as refused
        self._closing = False
        self._buffers: dict[int, bytearray] = {}
        # Stake-weighted QoS (localnet.qos), used only while the server's Qos is enabled.
        self.qos_state: QosState | None = None
        self.qos_stake = 0
        self.qos_table = ""
        self.qos_last_update = 0.0
        self.qos_interval_start = 0.0
        self.qos_stream_count = 0
        self.qos_backlog: deque[bytes] = deque()
        self.qos_timer: asyncio.TimerHandle | None = None

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        """Feed one datagram; a bug triggered by a peer closes its connection, not the server."""
        try:
            super().datagram_received(data, addr)
        except Exception:
            logger.exception("tpu: internal error on connection from %s", addr)
            self.close_with(QuicErrorCode.INTERNAL_ERROR, "internal error")

    def close_with(self, error_code: int, reason: str) -> None:
        """Close the connection and give its per-IP slot back now, not after draining."""
        self._closing = True
        self._buffers.clear()
        self._server._release(self)
        self.close(error_code=error_code, reason_phrase=reason)

    def shutdown(self) -> None:
        """Stop this connection's timer so nothing fires after the socket is closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self._server._admit(self)
        elif isinstance(event, events.StreamDataReceived):
            if self.accepted and not self._closing:
                self._on_stream_data(event)
        elif isinstance(event, events.StreamReset):
            # Agave drops a stream whose read fails and keeps the connection.
            self._buffers.pop(event.stream_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self._closing = True
            self._buffers.clear()
            self._server._terminated(self, event)

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        buffer = self._buffers.get(event.stream_id)
        if buffer is None:
            buffer = self._buffers[event.stream_id] = bytearray()
            self._server._stats.streams_received += 1
        buffer += event.data
        if len(buffer) > PACKET_DATA_SIZE:
            # handle_chunks: accumulated size > PACKET_DATA_SIZE is an invalid stream.
            self._server._stats.oversized_streams += 1
            logger.info("tpu: %s sent a %d+ byte stream, closing", self.peer, len(buffer))
            self.close_with(*_INVALID_STREAM)
            return
        if not event.end_stream:
            return
        del self._buffers[event.stream_id]
        if not buffer:
            # handle_chunks: a stream finished without any chunk is an invalid stream.
            self._server._stats.empty_streams += 1
            logger.info("tpu: %s sent an empty stream, closing", self.peer)
            self.close_with(*_INVALID_STREAM)
            return
        self._server._deliver(bytes(buffer), cast(str, self.peer), self)


class _TpuEndpoint(asyncio.DatagramProtocol):
    """The UDP socket: routes datagrams to connections by connection ID, creates new ones.

    Modelled on aioquic's ``QuicServer``, without its optional Retry (address validation),
    which a loopback cluster does not need.
    """

    def __init__(self, server: TpuQuicServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.protocols: dict[bytes, _TpuConnectionProtocol] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        data = cast(bytes, data)
        configuration = self._server._configuration
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=configuration.connection_id_length
            )
        except ValueError:
            return
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in configuration.supported_versions
        ):
            assert self.transport is not None
            self.transport.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=configuration.supported_versions,
                ),
                addr,
            )
            return
        protocol = self.protocols.get(header.destination_cid)
        if protocol is None:
            if header.packet_type != QuicPacketType.INITIAL:
                return
            if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
                return  # RFC 9000 14.1: a client's Initial is padded to 1200 bytes
            protocol = self._new_connection(header.destination_cid, addr)
        protocol.datagram_received(data, addr)

    def _new_connection(self, original_cid: bytes, addr: NetworkAddress) -> _TpuConnectionProtocol:
        server = self._server
        quic = _TpuQuicConnection(
            configuration=server._configuration,
            original_destination_connection_id=original_cid,
            max_uni_streams=server._max_uni_streams,
            on_bidi_stream=server._count_bidi,
        )
        protocol = _TpuConnectionProtocol(quic, server, str(addr[0]))
        protocol.connection_made(cast(asyncio.BaseTransport, self.transport))
        # Route every connection ID the connection issues, as aioquic's QuicServer does.
        protocol._connection_id_issued_handler = partial(self._route, protocol=protocol)
        protocol._connection_id_retired_handler = self._unroute
        protocol._connection_terminated_handler = partial(self._forget, protocol)
        self.protocols[original_cid] = protocol
        self.protocols[quic.host_cid] = protocol
        return protocol

    def _route(self, cid: bytes, protocol: _TpuConnectionProtocol) -> None:
        self.protocols[cid] = protocol

    def _unroute(self, cid: bytes) -> None:
        self.protocols.pop(cid, None)

    def _forget(self, protocol: _TpuConnectionProtocol) -> None:
        for cid in [cid for cid, p in self.protocols.items() if p is protocol]:
            del self.protocols[cid]


class TpuQuicServer:
    """A local validator's TPU QUIC endpoint (agave semantics for unstaked peers).

    Every complete transaction is passed to ``on_transaction(raw, peer)`` where ``peer`` is
    the base58 identity from the client's certificate. The callback runs on the event loop;
    its exceptions are logged and counted, never propagated.
    """

    def __init__(
        self,
        identity: Keypair,
        on_transaction: TransactionCallback,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_uni_streams: int = QUIC_MAX_UNSTAKED_CONCURRENT_STREAMS,
        max_connections_per_ip: int = DEFAULT_MAX_QUIC_CONNECTIONS_PER_PEER,
        max_new_connections_per_minute: int = DEFAULT_MAX_CONNECTIONS_PER_IPADDR_PER_MINUTE,
        idle_timeout: float = QUIC_MAX_TIMEOUT,
        qos: Qos | None = None,
    ) -> None:
        self.identity = identity
        self.host = host
        self.port = port
        self._on_transaction = on_transaction
        self._max_uni_streams = max_uni_streams
        self._max_connections_per_ip = max_connections_per_ip
        self._max_new_connections_per_minute = max_new_connections_per_minute
        self._stats = _Stats()
        self._open_per_ip: dict[str, int] = {}
        self._recent_per_ip: dict[str, deque[float]] = {}
        self._endpoint: _TpuEndpoint | None = None
        # Stake-weighted QoS: inert unless qos.enabled (checked per connection at admission).
        self.qos = qos
        self.qos_state = QosState(self, qos) if qos is not None else None
        certificate, private_key = node_certificate(identity)
        self._configuration = QuicConfiguration(
            alpn_protocols=[ALPN_TPU_PROTOCOL_ID],
            is_client=False,
            idle_timeout=idle_timeout,
            # stream_receive_window(PACKET_DATA_SIZE) in configure_server. aioquic grows a
            # stream's window as it is consumed, so the size cap is enforced per stream in
            # _TpuConnectionProtocol, exactly as agave's handle_chunks does.
            max_stream_data=PACKET_DATA_SIZE,
            # Agave caps an unstaked connection's *unread* data at
            # QUIC_UNSTAKED_RECEIVE_WINDOW_RATIO (solana-quic-definitions) x PACKET_DATA_SIZE
            # and quinn returns credit as the streamer reads. aioquic's credit only doubles
            # once half is used, so grant one full transaction per allowed stream up front.
            max_data=max_uni_streams * PACKET_DATA_SIZE,
            # datagram_receive_buffer_size(None): no DATAGRAM frames (aioquic rejects them
            # with PROTOCOL_VIOLATION when max_datagram_frame_size is None).
            max_datagram_frame_size=None,
            supported_versions=[QuicProtocolVersion.VERSION_1],
            # Chains are never verified (self-signed identities are the norm).
            verify_mode=ssl.CERT_NONE,
            certificate=certificate,
            private_key=private_key,
        )

    @property
    def address(self) -> str:
        """``host:port`` as a TPU QUIC address in gossip, valid after ``start()``."""
        return f"{self.host}:{self.port}"

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters, as plain ints."""
        return asdict(self._stats)

    async def start(self) -> None:
        """Bind the UDP socket; afterwards ``self.port`` is the real port."""
        if self._endpoint is not None:
            raise RuntimeError("TpuQuicServer already started")
        loop = asyncio.get_running_loop()
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: _TpuEndpoint(self), local_addr=(self.host, self.port)
        )
        self._endpoint = endpoint
        self.port = transport.get_extra_info("sockname")[1]
        logger.info("tpu: listening on %s as %s", self.address, self.identity.pubkey())

    async def stop(self) -> None:
        """Close every connection (NO_ERROR) and release the UDP port before returning."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is None:
            return
        for protocol in set(endpoint.protocols.values()):
            protocol.close_with(QuicErrorCode.NO_ERROR, "server shutting down")
            protocol.shutdown()
        endpoint.protocols.clear()
        assert endpoint.transport is not None
        endpoint.transport.close()
        await endpoint.closed  # the socket is closed in connection_lost, one loop turn later
        logger.info("tpu: stopped %s", self.address)

    # --- called by connections --------------------------------------------------------

    def _admit(self, protocol: _TpuConnectionProtocol) -> None:
        """Apply agave's post-handshake checks, in its order (setup_connection)."""
        quic = cast(_TpuQuicConnection, protocol._quic)
        certificate = quic.peer_certificate
        protocol.peer = _pubkey_of(certificate) if certificate is not None else None
        if protocol.peer is None:  # unreachable: the TLS context insists on Ed25519
            self._refuse(protocol, *_DISALLOWED)
            return
        # rate_limiter.register_connection(ip) fails -> close DISALLOWED. A sliding window
        # (agave uses a token bucket with a 10x burst; here the Nth+1 within 60 s is refused).
        now = time.monotonic()
        recent = self._recent_per_ip.setdefault(protocol.ip, deque())
        while recent and now - recent[0] >= _RATE_WINDOW:
            recent.popleft()
        if len(recent) >= self._max_new_connections_per_minute:
            self._refuse(protocol, *_DISALLOWED)
            return
        recent.append(now)
        # ConnectionTable::try_add_connection over max_connections_per_peer -> TOO_MANY.
        if self._open_per_ip.get(protocol.ip, 0) >= self._max_connections_per_ip:
            self._refuse(protocol, *_TOO_MANY)
            return
        self._open_per_ip[protocol.ip] = self._open_per_ip.get(protocol.ip, 0) + 1
        protocol.accepted = True
        self._stats.connections_accepted += 1
        self._stats.connections_open += 1
        logger.debug("tpu: accepted %s from %s", protocol.peer, protocol.ip)
        if self.qos_state is not None and self.qos_state.qos.enabled:
            protocol.qos_state = self.qos_state
            self.qos_state.admit(protocol)

    def _refuse(self, protocol: _TpuConnectionProtocol, code: int, reason: str) -> None:
        protocol.refused = True
        self._stats.connections_refused += 1
        logger.info("tpu: refusing %s from %s: %s", protocol.peer, protocol.ip, reason)
        protocol.close_with(code, reason)

    def _release(self, protocol: _TpuConnectionProtocol) -> None:
        """Give an accepted connection's per-IP slot back (idempotent)."""
        if not protocol.accepted or protocol.released:
            return
        protocol.released = True
        if protocol.qos_state is not None:
            protocol.qos_state.release(protocol)
        self._stats.connections_open -= 1
        remaining = self._open_per_ip.get(protocol.ip, 1) - 1
        if remaining > 0:
            self._open_per_ip[protocol.ip] = remaining
        else:
            self._open_per_ip.pop(protocol.ip, None)

    def _terminated(
        self, protocol: _TpuConnectionProtocol, event: events.ConnectionTerminated
    ) -> None:
        if not protocol.accepted and not protocol.refused:
            # Never admitted: the handshake failed (no/invalid client certificate, wrong
            # ALPN, timeout) or the peer went away first.
            self._stats.connections_refused += 1
            logger.info(
                "tpu: handshake from %s failed: 0x%x %s",
                protocol.ip,
                event.error_code,
                event.reason_phrase,
            )
        self._release(protocol)

    def _count_bidi(self) -> None:
        self._stats.bidi_refused += 1
        logger.info("tpu: peer opened a bidirectional stream; closing with STREAM_LIMIT_ERROR")

    def qos_stats(self) -> dict | None:
        """The QoS layer's tables and counters, or None when this server has no Qos."""
        return self.qos_state.snapshot() if self.qos_state is not None else None

    def _deliver(self, raw: bytes, peer: str, protocol: _TpuConnectionProtocol | None = None) -> None:
        if protocol is not None and protocol.qos_state is not None and protocol.qos_state.qos.enabled:
            protocol.qos_state.on_stream(protocol, raw)  # reads now, later, or never
            return
        self._hand_over(raw, peer)

    def _hand_over(self, raw: bytes, peer: str) -> None:
        self._stats.transactions += 1
        try:
            self._on_transaction(raw, peer)
        except Exception:
            self._stats.callback_errors += 1
            logger.exception("tpu: on_transaction raised for a %d byte transaction", len(raw))
