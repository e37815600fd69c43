"""The QUIC connection cache: long-lived aioquic connections to leaders' TPU addresses.

* ``node_certificate``: the self-signed Ed25519 certificate every TPU client must
  present (the server's client-auth is mandatory); its key is the client's node identity.
* ``ConnectionCache``: long-lived aioquic connections to upcoming leaders, opened ahead of
  need, reused, kept alive, LRU-bounded, with exponential backoff for dead leaders.
  Validators allow only 8 *new* connections per minute per IP, so a connection per
  transaction would be refused within seconds.

A connection reports a transaction "delivered" when the leader's QUIC stack acknowledged
every byte and the FIN of its stream (a QUIC ACK, one round trip); see ``sender``.

Follows agave (anza-xyz/agave ``tpu-client-next``, ``streamer``, ``tls-utils``; constants in
anza-xyz/solana-sdk ``quic-definitions``) and docs/architecture.md section 8. No
transaction bytes, keys or seeds are ever logged; identities are public keys.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicProtocolVersion
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from solders.keypair import Keypair

from .address import Address, _format_addr

log = logging.getLogger("hft.tpu")

# --- protocol constants (where each comes from) --------------------------------------------

# ALPN_TPU_PROTOCOL_ID = b"solana-tpu", agave streamer/src/nonblocking/quic.rs.
ALPN_TPU_PROTOCOL_ID = "solana-tpu"

# DEFAULT_MAX_CONNECTION_HANDSHAKE_TIMEOUT = 2 s, agave tpu-client-next/src/connection_worker.rs
# (the server's own QUIC_CONNECTION_HANDSHAKE_TIMEOUT is also 2 s, nonblocking/quic.rs).
HANDSHAKE_TIMEOUT_S = 2.0

# Idle timeout. QUIC negotiates the smaller of both peers' values. Current agave uses 60 s
# (QUIC_MAX_TIMEOUT, solana-sdk quic-definitions), tpu-client-next used its own 10 s
# (QUIC_MAX_TIMEOUT in tpu-client-next/src/quic_networking.rs before it moved to
# quic-definitions), older validators 2 s (QUIC_MAX_TIMEOUT_MS, solana sdk/src/quic.rs);
# 10 s is the common ground yellowstone-jet chose too.
IDLE_TIMEOUT_S = 10.0

# Keep-alive. agave's client keeps connections alive with a PING every QUIC_KEEP_ALIVE
# (45 s against a 60 s idle timeout now; 1 s against 2 s in solana sdk/src/quic.rs
# QUIC_KEEP_ALIVE_MS). aioquic has no keep-alive setting, so ConnectionCache pings on a
# timer; 1 s stays under the smallest idle timeout a server may negotiate (2 s).
KEEPALIVE_S = 1.0

# Reconnect backoff. tpu-client-next waits RETRY_SLEEP_INTERVAL = NUM_CONSECUTIVE_LEADER_SLOTS
# x DEFAULT_MS_PER_SLOT = 1.6 s between reconnects (connection_worker.rs); here the wait
# starts at 0.2 s and doubles up to that 1.6 s, so a briefly unreachable leader is retried
# within its own window and a dead one costs at most one attempt per leader window.
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 1.6

# A leader that left the connect window keeps its connection this long in case it comes
# back (agave's WorkersCache only evicts by LRU); then it is closed, since every reopen
# counts against the server's DEFAULT_MAX_CONNECTIONS_PER_IPADDR_PER_MINUTE = 8
# (streamer/src/quic.rs). Equal to the idle timeout we would otherwise keep pinging against.
RETIRE_AFTER_S = IDLE_TIMEOUT_S

# Server close codes after which reconnecting at once is pointless (rate limit / too many
# connections from our IP): CONNECTION_CLOSE_CODE_DISALLOWED = 2, _EXCEED_MAX_STREAM_COUNT = 3,
# _TOO_MANY = 4, streamer/src/nonblocking/quic.rs.
_BACKOFF_CLOSE_CODES = frozenset({2, 3, 4})
# The application error code of the RESET_STREAM sent for a transaction its sender gave up on: the
# peer only needs to learn that the stream ends there (RFC 9000 section 19.4); no code has a meaning
# for a TPU stream.
STREAM_ABANDONED = 0


# --- node certificate ---------------------------------------------------------------------


def node_certificate(identity: Keypair) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """The self-signed X.509 certificate a Solana node presents in QUIC's TLS handshake, as a
    client (the executor's TPU sender) or a server (the local cluster's TPU), carrying
    ``identity``'s Ed25519 key.

    Mirrors agave tls-utils ``new_dummy_x509_certificate``: version 3, serial
    0x0101010101010101, issuer CN "Solana node", empty subject, validity 1970-01-01 to
    4096-01-01, critical SAN dNSName "localhost", critical basicConstraints (not a CA).
    Peers read only the public key (``get_pubkey_from_tls_certificate``): it is the
    node identity, proven by the TLS CertificateVerify signature, and a staked
    identity gets more streams. Agave leaves the certificate's own signature invalid
    (0xff bytes); here it is validly self-signed, which peers accept just the same.

    Pass a *node identity* keypair, never a wallet: this key signs TLS handshakes on
    every connection, so it must not be one that holds funds.
    """
    private_key = Ed25519PrivateKey.from_private_bytes(identity.secret())
    utc = datetime.timezone.utc
    certificate = (
        x509.CertificateBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Solana node")]))
        .subject_name(x509.Name([]))
        .public_key(private_key.public_key())
        .serial_number(0x0101010101010101)
        .not_valid_before(datetime.datetime(1970, 1, 1, tzinfo=utc))
        .not_valid_after(datetime.datetime(4096, 1, 1, tzinfo=utc))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key, algorithm=None)
    )
    return certificate, private_key


# --- connections --------------------------------------------------------------------------


class ConnectionLost(Exception):
    """The QUIC connection closed (or was closed) before the stream was acknowledged."""


class ConnectFailed(Exception):
    """The handshake with a leader failed or timed out."""


class LeaderBackoff(Exception):
    """The leader failed recently; it is skipped until its backoff passes."""


class _TpuConnection(QuicConnectionProtocol):
    """One client connection to a leader: one transaction per uni stream, delivery by ACK.

    aioquic raises no event when a sent stream is acknowledged, so after every datagram
    received the streams awaiting delivery are checked (``QuicStreamSender.is_finished``
    turns true once all data and the FIN are ACKed). aioquic also reports a peer's
    CONNECTION_CLOSE only after the 3 x PTO draining period, so the close is detected
    from the connection's state at once.
    """

    def __init__(self, quic: QuicConnection, addr: Address, on_closed: Any) -> None:
        super().__init__(quic)
        self.addr = addr
        self.opened_at = time.monotonic()
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed_flag = False
        self._on_closed = on_closed
        self._pending: dict[int, tuple[QuicStream, asyncio.Future[None]]] = {}
        self.streams_reset = 0  # transactions abandoned unacknowledged: reset, so QUIC stops retransmitting them

    @property
    def alive(self) -> bool:
        return not self._closed_flag

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def send_transaction(self, raw: bytes) -> None:
        """Write ``raw`` on a new uni stream with FIN; returns when the leader ACKs it.

        Cancelled before the ACK (the sender's timeout, a worker stopping), the stream is reset
        (RESET_STREAM): otherwise QUIC keeps retransmitting the transaction on its own, after its
        sender gave up on it and after a halt acknowledged that nothing more goes out (issue 20).
        A leader that already has every byte may still process it; the chain says (confirm follows)."""
        if self._closed_flag:
            raise ConnectionLost(f"connection to {_format_addr(self.addr)} is closed")
        quic = self._quic
        stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(stream_id, raw, end_stream=True)
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[stream_id] = (quic._streams[stream_id], future)
        self.transmit()
        try:
            await future
        except asyncio.CancelledError:
            self._reset(stream_id)
            raise

    def _reset(self, stream_id: int) -> None:
        if self._pending.pop(stream_id, None) is None or self._closed_flag:
            return  # answered meanwhile, or the connection is gone with everything on it
        try:
            self._quic.reset_stream(stream_id, STREAM_ABANDONED)
        except Exception as error:  # already finished or reset: nothing left to stop
            log.debug("event=tpu_stream_reset_skipped stream=%d error=%s", stream_id, error)
            return
        self.streams_reset += 1
        self.transmit()

    def keepalive(self) -> None:
        """Fire-and-forget PING (aioquic's own ping() waits for the ACK): resets both idle timers."""
        if not self._closed_flag:
            self._quic.send_ping(0)
            self.transmit()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self._after_io()

    def _handle_timer(self) -> None:
        super()._handle_timer()
        self._after_io()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated):
            self._mark_closed(event.error_code, event.reason_phrase)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._mark_closed(QuicErrorCode.INTERNAL_ERROR, "socket closed")

    def _after_io(self) -> None:
        close_event = self._quic._close_event
        if close_event is not None:
            self._mark_closed(close_event.error_code, close_event.reason_phrase)
            return
        if self._pending:
            for stream_id in [sid for sid, (stream, _) in self._pending.items() if stream.sender.is_finished]:
                _, future = self._pending.pop(stream_id)
                if not future.done():
                    future.set_result(None)

    def _mark_closed(self, code: int, reason: str) -> None:
        if self._closed_flag:
            return
        self._closed_flag = True
        self.close_code, self.close_reason = code, reason
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"closed: code={code} reason={reason}"))
                future.exception()  # retrieved here: a timed-out sender may no longer await it
        self._on_closed(self)


@dataclass
class _Backoff:
    failures: int = 0
    retry_at: float = 0.0


@dataclass
class _Entry:
    connection: _TpuConnection
    transport: asyncio.DatagramTransport
    last_wanted: float = field(default_factory=time.monotonic)


class ConnectionCache:
    """Long-lived QUIC connections to leaders, keyed by address, LRU-bounded.

    Why: a handshake costs a round trip or two plus a TLS signature, and validators refuse
    an IP's 9th new connection within a minute, so connections are opened before the
    leader's window (``warm``), reused for every transaction, pinged to stay open, and
    closed only when the leader has left the window for ``retire_after_s`` (``retain``) or
    when the LRU bound is reached. A failed connect puts the address in exponential
    backoff (``BACKOFF_BASE_S`` doubling to ``BACKOFF_MAX_S``): ``get`` then raises
    ``LeaderBackoff`` at once instead of waiting on a dead leader again.
    """

    def __init__(
        self,
        identity: Keypair,
        max_connections: int = 16,
        *,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        keepalive_s: float = KEEPALIVE_S,
        retire_after_s: float = RETIRE_AFTER_S,
        on_open: Any = None,
        on_failure: Any = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self.handshake_timeout_s = handshake_timeout_s
        self.keepalive_s = keepalive_s
        self.retire_after_s = retire_after_s
        self.opens = 0
        self.failures = 0
        self._on_open = on_open or (lambda: None)
        self._on_failure = on_failure or (lambda: None)
        self._entries: OrderedDict[Address, _Entry] = OrderedDict()
        self._connecting: dict[Address, asyncio.Task[_TpuConnection]] = {}
        self._backoff: dict[Address, _Backoff] = {}
        self._keepalive_task: asyncio.Task[None] | None = None
        certificate, private_key = node_certificate(identity)
        self._configuration = dict(certificate=certificate, private_key=private_key, idle_timeout=idle_timeout_s)

    def _new_quic(self, addr: Address) -> QuicConnection:
        host, port = addr
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN_TPU_PROTOCOL_ID],
            # Validators self-sign; agave's client skips server verification too
            # (tls-utils SkipServerVerification).
            verify_mode=ssl.CERT_NONE,
            # socket_addr_to_quic_server_name (tls-utils): "{ip}.{port}.sol"; unchecked.
            server_name=f"{host}.{port}.sol",
            # QUIC v1 only: agave (quinn) and Firedancer speak v1 (docs/architecture.md section 8).
            supported_versions=[QuicProtocolVersion.VERSION_1],
            # The TPU sends nothing back on streams and refuses datagrams.
            max_datagram_frame_size=None,
            **self._configuration,
        )
        return QuicConnection(configuration=configuration)

    # lifecycle

    def start(self) -> None:
        if self._keepalive_task is None:
            self._keepalive_task = asyncio.create_task(self._keepalive_loop(), name="tpu-keepalive")

    async def close(self) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            await asyncio.gather(self._keepalive_task, return_exceptions=True)
            self._keepalive_task = None
        connecting = list(self._connecting.values())
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        for addr in list(self._entries):
            self._drop(addr, "client stopping")

    # queries

    def __len__(self) -> int:
        return len(self._entries)

    def addresses(self) -> list[Address]:
        return list(self._entries)

    def in_backoff(self, addr: Address) -> bool:
        backoff = self._backoff.get(addr)
        return backoff is not None and time.monotonic() < backoff.retry_at

    # use

    async def get(self, addr: Address) -> _TpuConnection:
        """A live connection to ``addr``: the cached one, the one being opened, or a new one.

        Raises ``LeaderBackoff`` at once while the address is backing off, ``ConnectFailed``
        if the handshake fails. Cancelling the caller does not cancel a handshake in flight.
        """
        entry = self._entries.get(addr)
        if entry is not None:
            if entry.connection.alive:
                self._entries.move_to_end(addr)
                return entry.connection
            self._drop(addr, "closed")
        task = self._connecting.get(addr)
        backoff = self._backoff.get(addr)
        if task is None:
            if self.in_backoff(addr):
                raise LeaderBackoff(f"{_format_addr(addr)} backing off after {backoff.failures} failure(s)")
            task = self._start_connect(addr)
        elif backoff is not None and backoff.failures:
            # A retry of a leader that has been failing: let it run in the background
            # instead of holding every send up to its timeout on a probably dead leader.
            raise LeaderBackoff(f"{_format_addr(addr)} reconnecting after {backoff.failures} failure(s)")
        return await asyncio.shield(task)

    def warm(self, addresses: Iterable[Address]) -> None:
        """Open connections to these addresses now (if not open, opening or backing off)."""
        now = time.monotonic()
        for addr in addresses:
            entry = self._entries.get(addr)
            if entry is not None and entry.connection.alive:
                entry.last_wanted = now
            elif addr not in self._connecting and not self.in_backoff(addr):
                self._start_connect(addr)

    def retain(self, addresses: Iterable[Address]) -> None:
        """Close connections whose leader has been out of the window for ``retire_after_s``."""
        now = time.monotonic()
        wanted = set(addresses)
        for addr, entry in list(self._entries.items()):
            if addr in wanted:
                entry.last_wanted = now
            elif now - entry.last_wanted > self.retire_after_s and entry.connection.pending == 0:
                self._drop(addr, "left the leader window")

    def discard(self, connection: _TpuConnection) -> None:
        """Forget a connection that failed (if it is still the cached one for its address)."""
        entry = self._entries.get(connection.addr)
        if entry is not None and entry.connection is connection:
            self._drop(connection.addr, "discarded")

    # internals

    def _start_connect(self, addr: Address) -> asyncio.Task[_TpuConnection]:
        task = asyncio.create_task(self._connect(addr), name=f"tpu-connect-{_format_addr(addr)}")
        self._connecting[addr] = task
        # A warm-up nobody awaits must not log "exception was never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _connect(self, addr: Address) -> _TpuConnection:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        transport: asyncio.DatagramTransport | None = None
        try:
            local = ("::", 0) if ":" in addr[0] else ("0.0.0.0", 0)
            transport_, protocol = await loop.create_datagram_endpoint(
                lambda: _TpuConnection(self._new_quic(addr), addr, self._connection_closed), local_addr=local
            )
            transport = cast(asyncio.DatagramTransport, transport_)
            connection = cast(_TpuConnection, protocol)
            connection.connect(addr)
            await asyncio.wait_for(connection.wait_connected(), self.handshake_timeout_s)
            if not connection.alive:
                raise ConnectionError(f"closed during handshake: {connection.close_reason}")
        except (OSError, ConnectionError, asyncio.TimeoutError) as error:
            if transport is not None:
                transport.close()
            self._record_failure(addr, error)
            raise ConnectFailed(f"{_format_addr(addr)}: {type(error).__name__} {error}".strip()) from None
        except BaseException:
            if transport is not None:
                transport.close()
            raise
        finally:
            self._connecting.pop(addr, None)
        self._backoff.pop(addr, None)
        self.opens += 1
        self._on_open()
        self._entries[addr] = _Entry(connection, transport)
        self._entries.move_to_end(addr)
        while len(self._entries) > self.max_connections:
            oldest = next(iter(self._entries))
            self._drop(oldest, "lru eviction")
        log.info("event=tpu_connect addr=%s ms=%.1f open=%d", _format_addr(addr), (time.perf_counter() - started) * 1000, len(self._entries))
        return connection

    def _record_failure(self, addr: Address, error: BaseException) -> None:
        backoff = self._backoff.setdefault(addr, _Backoff())
        backoff.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (backoff.failures - 1))
        backoff.retry_at = time.monotonic() + delay
        self.failures += 1
        self._on_failure()
        if len(self._backoff) > 4 * self.max_connections:  # bound: forget the oldest expired ones
            now = time.monotonic()
            for stale in [a for a, b in self._backoff.items() if b.retry_at < now - 60]:
                del self._backoff[stale]
        log.warning(
            "event=tpu_connect_failed addr=%s failures=%d backoff_s=%.2f error=%s",
            _format_addr(addr), backoff.failures, delay, f"{type(error).__name__} {error}".strip(),
        )

    def _connection_closed(self, connection: _TpuConnection) -> None:
        """Called by a connection when it closes, whoever closed it."""
        entry = self._entries.get(connection.addr)
        if entry is not None and entry.connection is connection:
            del self._entries[connection.addr]
            asyncio.get_running_loop().call_soon(entry.transport.close)
            log.info(
                "event=tpu_connection_closed addr=%s code=%s reason=%s",
                _format_addr(connection.addr), connection.close_code, connection.close_reason or "-",
            )
            if connection.close_code in _BACKOFF_CLOSE_CODES:
                self._record_failure(connection.addr, ConnectionError(f"refused by server: {connection.close_reason}"))

    def _drop(self, addr: Address, why: str) -> None:
        entry = self._entries.pop(addr, None)
        if entry is None:
            return
        log.info("event=tpu_connection_dropped addr=%s why=%s", _format_addr(addr), why)
        if entry.connection.alive:
            entry.connection.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase=why)
        asyncio.get_running_loop().call_soon(entry.transport.close)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            for entry in list(self._entries.values()):
                entry.connection.keepalive()

