"""Direct TPU submission over QUIC: the executor's client for the current and next leaders.

Why: sending a signed transaction straight to the leaders' TPU ports skips the RPC node's
queue and its 2 s rebroadcast; it is how production senders (agave's tpu-client-next,
yellowstone-jet) get a transaction into the next block. This module follows agave
(anza-xyz/agave ``tpu-client-next``, ``streamer``, ``tls-utils``; constants in
anza-xyz/solana-sdk ``quic-definitions``) and docs/architecture.md section 8:

* ``make_client_certificate``: the self-signed Ed25519 certificate every TPU client must
  present (the server's client-auth is mandatory); its key is the client's node identity.
* ``LeaderTracker``: current slot (websocket ``slotSubscribe``, ``getSlot`` polling as a
  fallback), the leader schedule (``getSlotLeaders`` in batches) and the leaders' QUIC
  addresses (``getClusterNodes`` ``tpuQuic``).
* ``ConnectionCache``: long-lived aioquic connections to upcoming leaders, opened ahead of
  need, reused, kept alive, LRU-bounded, with exponential backoff for dead leaders.
  Validators allow only 8 *new* connections per minute per IP, so a connection per
  transaction would be refused within seconds.
* ``TpuClient``: ``send(raw)`` writes the same bytes to every upcoming leader at once, one
  transaction per unidirectional stream, and reports who acknowledged it.

"Delivered" here means the leader's QUIC stack acknowledged every byte and the FIN of the
stream (a QUIC ACK, one round trip), which is stronger than agave's ``write_all`` returning
(bytes queued locally). It still does not mean the transaction will land: a TPU never
answers, so landing is checked with ``getSignatureStatuses`` by the caller, who resends the
same bytes (safe: a signature is processed at most once) until its blockhash expires.

No transaction bytes, keys or seeds are ever logged; identities are public keys.
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

import aiohttp
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicProtocolVersion
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter, Histogram
from solders.keypair import Keypair

from venue import PACKET_DATA_SIZE

from .rpc import RpcRateLimited, RpcRefused, RpcUnavailable, SolanaRpc

__all__ = [
    "ConnectionCache",
    "ConnectFailed",
    "LeaderBackoff",
    "LeaderTracker",
    "TpuClient",
    "TpuSendReport",
    "make_client_certificate",
]

log = logging.getLogger("hft.tpu")

Address = tuple[str, int]

# --- protocol constants (where each comes from) --------------------------------------------

# ALPN_TPU_PROTOCOL_ID = b"solana-tpu", agave streamer/src/nonblocking/quic.rs.
ALPN_TPU_PROTOCOL_ID = "solana-tpu"

# PACKET_DATA_SIZE (venue.protocol): the server closes the *whole connection* (code 5
# "invalid_stream") on a bigger or an empty stream (handle_chunks,
# streamer/src/nonblocking/quic.rs), so both are refused before sending.

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

# NUM_CONSECUTIVE_LEADER_SLOTS (solana-clock): a leader holds 4 consecutive slots.
LEADER_SLOTS = 4

# Connections are opened for the leaders of fanout_slots + this many slots, i.e. one leader
# window beyond the send set, as tpu-client-next's Fanout { send, connect = send + 1 }
# (connection_workers_scheduler.rs) hides the handshake behind the previous window.
CONNECT_LOOKAHEAD_SLOTS = LEADER_SLOTS

# getSlotLeaders takes a limit of 1..5000 (MAX_GET_SLOT_LEADERS, agave rpc); fetch a batch
# ahead and refresh once fewer than LEADER_REFRESH_MARGIN cached slots remain.
LEADER_BATCH_SLOTS = 64
LEADER_REFRESH_MARGIN = 32

# QUIC_PORT_OFFSET = 6 (solana sdk/src/quic.rs): the legacy QUIC port is the UDP tpu + 6,
# used only when a node does not advertise tpuQuic.
QUIC_PORT_OFFSET = 6

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

# Slot tracking: poll getSlot this often without a websocket; a websocket silent this long
# is considered dead; retry the websocket this often while polling.
SLOT_POLL_S = 0.1
WS_STALE_S = 2.0
WS_RETRY_S = 5.0

_WRITE_MS_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2000)


# --- 1. client certificate -------------------------------------------------------------------


def make_client_certificate(identity: Keypair) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """Self-signed X.509 certificate carrying ``identity``'s Ed25519 key, for the QUIC TLS handshake.

    Mirrors agave tls-utils ``new_dummy_x509_certificate``: version 3, serial
    0x0101010101010101, issuer CN "Solana node", empty subject, validity 1970-01-01 to
    4096-01-01, critical SAN dNSName "localhost", critical basicConstraints (not a CA).
    Peers read only the public key (``get_pubkey_from_tls_certificate``): it is the
    sender's node identity, proven by the TLS CertificateVerify signature, and a staked
    identity gets more streams. Agave leaves the certificate's own signature invalid
    (0xff bytes); here it is validly self-signed, which peers accept just the same.

    Pass the sender's *node identity* keypair, never a wallet: this key signs TLS
    handshakes on every connection, so it must not be one that holds funds.
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


def _format_addr(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_addr(value: str | None) -> Address | None:
    """``"ip:port"`` / ``"[v6]:port"`` from getClusterNodes, or None if absent or malformed."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


# --- 2. leader tracking ----------------------------------------------------------------------


class RpcError(Exception):
    """A JSON-RPC call failed (transport error or an error object in the answer)."""


class LeaderTracker:
    """Knows the current slot and the upcoming leaders' QUIC addresses, without a call per send.

    Why: ``send`` must pick its targets in microseconds, so everything it needs is kept
    current in the background. The slot comes from the websocket (pushed every slot); if
    the websocket fails or goes silent, ``getSlot`` is polled every 100 ms until the
    websocket is back. The schedule is fetched ``LEADER_BATCH_SLOTS`` at a time ahead of
    need, addresses every ``refresh_nodes_s`` (the legacy TpuClient refreshed every 5 min;
    addresses rarely change, but a restarted validator may move).
    """

    def __init__(
        self,
        rpc_url: str,
        ws_url: str | None,
        fanout_slots: int = 4,
        refresh_nodes_s: float = 30.0,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if fanout_slots < 1:
            raise ValueError("fanout_slots must be >= 1")
        self.rpc_url = rpc_url
        self.ws_url = ws_url
        self.fanout_slots = fanout_slots
        self.refresh_nodes_s = refresh_nodes_s
        self._session = session  # for the websocket
        self._own_session = session is None
        self._json_rpc = SolanaRpc(rpc_url, timeout_s=5.0, max_connections=8)
        self._slot = 0
        self._leaders: dict[int, str] = {}
        self._leaders_end = 0  # one past the highest slot whose leader is known
        self._nodes: dict[str, Address] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_refresh: asyncio.Task[None] | None = None
        self.slot_source = "none"  # "ws" or "poll": where the slot currently comes from
        self.slot_updated = asyncio.Event()

    # lifecycle

    async def start(self) -> None:
        """Load slot, schedule and addresses once (so ``upcoming`` works at once), then track."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=5),
            )
        self._set_slot(int(await self._rpc("getSlot", [{"commitment": "processed"}])))
        await asyncio.gather(self._refresh_leaders(), self._refresh_nodes())
        self._tasks = [
            asyncio.create_task(self._slot_loop(), name="tpu-slot"),
            asyncio.create_task(self._nodes_loop(), name="tpu-nodes"),
        ]
        log.info(
            "event=tpu_tracker_started slot=%d leaders_cached=%d nodes=%d ws=%s",
            self._slot, len(self._leaders), len(self._nodes), bool(self.ws_url),
        )

    async def stop(self) -> None:
        tasks = self._tasks + ([self._leader_refresh] if self._leader_refresh else [])
        self._tasks, self._leader_refresh = [], None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._json_rpc.close()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # queries

    @property
    def current_slot(self) -> int:
        return self._slot

    def leader_address(self, pubkey: str) -> Address | None:
        return self._nodes.get(pubkey)

    def upcoming(self, slots: int | None = None) -> list[tuple[str, Address]]:
        """Distinct (leader pubkey, QUIC address) for the next ``slots`` (default fanout_slots) slots.

        In slot order, starting at the current slot (its leader is still producing).
        Leaders without a known QUIC address are left out: nothing can be sent to them.
        """
        count = self.fanout_slots if slots is None else slots
        start = self._slot
        seen: set[str] = set()
        result: list[tuple[str, Address]] = []
        for slot in range(start, start + count):
            leader = self._leaders.get(slot)
            if leader is None or leader in seen:
                continue
            seen.add(leader)
            addr = self._nodes.get(leader)
            if addr is not None:
                result.append((leader, addr))
        if start + count + LEADER_REFRESH_MARGIN > self._leaders_end:
            self._schedule_leader_refresh()
        return result

    # internals

    async def _rpc(self, method: str, params: list[Any]) -> Any:
        try:
            return await self._json_rpc.call(method, params)
        except (RpcRateLimited, RpcRefused, RpcUnavailable) as error:
            raise RpcError(str(error)) from None

    def _set_slot(self, slot: int) -> None:
        if slot > self._slot:
            self._slot = slot
            for old in [s for s in self._leaders if s < slot]:
                del self._leaders[old]
            if slot + self.fanout_slots + CONNECT_LOOKAHEAD_SLOTS + LEADER_REFRESH_MARGIN > self._leaders_end:
                self._schedule_leader_refresh()
            self.slot_updated.set()
            self.slot_updated.clear()

    def _schedule_leader_refresh(self) -> None:
        if self._leader_refresh is None or self._leader_refresh.done():
            self._leader_refresh = asyncio.create_task(self._refresh_leaders_logged(), name="tpu-leaders")

    async def _refresh_leaders_logged(self) -> None:
        try:
            await self._refresh_leaders()
        except RpcError as error:
            log.warning("event=tpu_leaders_refresh_failed slot=%d error=%s", self._slot, error)

    async def _refresh_leaders(self) -> None:
        start = self._slot
        leaders = await self._rpc("getSlotLeaders", [start, LEADER_BATCH_SLOTS])
        for offset, leader in enumerate(leaders):
            self._leaders[start + offset] = leader
        self._leaders_end = max(self._leaders_end, start + len(leaders))

    async def _refresh_nodes(self) -> None:
        nodes: dict[str, Address] = {}
        for node in await self._rpc("getClusterNodes", []):
            addr = _parse_addr(node.get("tpuQuic"))
            if addr is None:  # legacy nodes: QUIC listens on the UDP tpu port + 6
                legacy = _parse_addr(node.get("tpu"))
                addr = (legacy[0], legacy[1] + QUIC_PORT_OFFSET) if legacy else None
            if addr is not None and node.get("pubkey"):
                nodes[node["pubkey"]] = addr
        self._nodes = nodes

    async def _nodes_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_nodes_s)
            try:
                await self._refresh_nodes()
            except RpcError as error:
                log.warning("event=tpu_nodes_refresh_failed error=%s", error)

    async def _slot_loop(self) -> None:
        """Websocket while it works; otherwise poll getSlot, retrying the websocket every WS_RETRY_S."""
        while True:
            if self.ws_url:
                try:
                    await self._follow_ws()
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ValueError, KeyError, TypeError) as error:
                    log.warning("event=tpu_slot_ws_failed fallback=poll error=%s", f"{type(error).__name__}: {error}")
            await self._poll_slots(WS_RETRY_S if self.ws_url else float("inf"))

    async def _follow_ws(self) -> None:
        assert self._session is not None
        async with self._session.ws_connect(self.ws_url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=1.0)) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "slotSubscribe"})
            self.slot_source = "ws"
            log.info("event=tpu_slot_ws_subscribed url=%s", self.ws_url)
            while True:
                message = await ws.receive(timeout=WS_STALE_S)
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"websocket {message.type.name}")
                data = message.json()
                if data.get("method") == "slotNotification":
                    self._set_slot(int(data["params"]["result"]["slot"]))
                elif "error" in data:
                    raise ValueError(f"slotSubscribe refused: {data['error']}")

    async def _poll_slots(self, duration_s: float) -> None:
        self.slot_source = "poll"
        loop = asyncio.get_running_loop()
        until = loop.time() + duration_s
        while loop.time() < until:
            try:
                self._set_slot(int(await self._rpc("getSlot", [{"commitment": "processed"}])))
            except RpcError as error:
                log.warning("event=tpu_slot_poll_failed error=%s", error)
            await asyncio.sleep(SLOT_POLL_S)


# --- 3. connections --------------------------------------------------------------------------


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

    @property
    def alive(self) -> bool:
        return not self._closed_flag

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send_transaction(self, raw: bytes) -> asyncio.Future[None]:
        """Write ``raw`` on a new uni stream with FIN; the future resolves when the leader ACKs it."""
        if self._closed_flag:
            raise ConnectionLost(f"connection to {_format_addr(self.addr)} is closed")
        quic = self._quic
        stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(stream_id, raw, end_stream=True)
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[stream_id] = (quic._streams[stream_id], future)
        self.transmit()
        return future

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
        certificate, private_key = make_client_certificate(identity)
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


# --- 4. the client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TpuSendReport:
    """What one ``send`` did: the leaders targeted (slot order), how many ACKed the stream."""

    leaders: tuple[str, ...]
    delivered: int
    failed: int
    elapsed_ms: float
    # (leader, outcome) per leader, outcome one of: delivered, timeout, connection_lost,
    # connect_failed, backoff.
    outcomes: tuple[tuple[str, str], ...] = ()


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sends = Counter(
            "executor_tpu_sends", "Transactions sent to a leader over QUIC, by outcome", ["leader", "outcome"], registry=registry
        )
        self.opens = Counter("executor_tpu_connection_opens", "QUIC connections opened to leaders", registry=registry)
        self.failures = Counter("executor_tpu_connection_failures", "QUIC connects that failed or timed out", registry=registry)
        self.write_ms = Histogram(
            "executor_tpu_stream_write_ms",
            "Stream open to the leader's ACK of all bytes and FIN, ms",
            buckets=_WRITE_MS_BUCKETS,
            registry=registry,
        )


class TpuClient:
    """Sends signed transactions straight to the upcoming leaders' TPU over QUIC.

    Why each choice: the same bytes go to every distinct leader of the next
    ``fanout_slots`` slots at once (the current leader may be about to hand over; a copy
    landing twice is impossible, a signature is processed once). Each leader has its own
    deadline (``timeout_s``), so a slow or dead one never delays the report beyond it.
    A leader whose connection drops mid-send is retried up to ``retry_count`` times on a
    new connection; one that failed to connect is skipped until its backoff passes.
    The client never resends by itself: the caller resends until the transaction lands or
    its blockhash expires.
    """

    def __init__(
        self,
        rpc_url: str,
        ws_url: str | None,
        identity: Keypair | None = None,
        fanout_slots: int = 4,
        timeout_s: float = 2.0,
        retry_count: int = 2,
        max_connections: int = 16,
        registry: CollectorRegistry | None = None,
    ) -> None:
        # Agave's client does the same without a configured identity: a fresh keypair
        # (QuicClientCertificate::default(), tpu-client-next), i.e. an unstaked peer.
        self._identity = identity if identity is not None else Keypair()
        self.fanout_slots = fanout_slots
        self.timeout_s = timeout_s
        self.retry_count = retry_count
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self.tracker = LeaderTracker(rpc_url, ws_url, fanout_slots)
        self.cache = ConnectionCache(
            self._identity,
            max_connections,
            on_open=self.metrics.opens.inc,
            on_failure=self.metrics.failures.inc,
        )
        self._maintain_task: asyncio.Task[None] | None = None

    @property
    def identity_pubkey(self) -> str:
        """The node identity presented to leaders (base58), not a wallet."""
        return str(self._identity.pubkey())

    async def __aenter__(self) -> TpuClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the schedule and addresses, and open connections to the upcoming leaders."""
        await self.tracker.start()
        self.cache.start()
        self._refresh_connections()
        self._maintain_task = asyncio.create_task(self._maintain_loop(), name="tpu-maintain")
        log.info("event=tpu_client_started identity=%s fanout_slots=%d", self.identity_pubkey, self.fanout_slots)

    async def stop(self) -> None:
        if self._maintain_task is not None:
            self._maintain_task.cancel()
            await asyncio.gather(self._maintain_task, return_exceptions=True)
            self._maintain_task = None
        await self.cache.close()
        await self.tracker.stop()
        log.info("event=tpu_client_stopped identity=%s", self.identity_pubkey)

    async def send(self, raw: bytes) -> TpuSendReport:
        """Send ``raw`` (one serialized, signed transaction) to every upcoming leader; never raises on network errors."""
        if len(raw) > PACKET_DATA_SIZE:
            raise ValueError(f"transaction of {len(raw)} bytes exceeds the {PACKET_DATA_SIZE}-byte packet limit")
        if not raw:
            raise ValueError("empty transaction")
        started = time.perf_counter()
        targets = self.tracker.upcoming()
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        outcomes = await asyncio.gather(*(self._send_one(leader, addr, raw, deadline) for leader, addr in targets))
        delivered = sum(1 for outcome in outcomes if outcome == "delivered")
        report = TpuSendReport(
            leaders=tuple(leader for leader, _ in targets),
            delivered=delivered,
            failed=len(targets) - delivered,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            outcomes=tuple((leader, outcome) for (leader, _), outcome in zip(targets, outcomes)),
        )
        level = logging.INFO if delivered else logging.WARNING
        log.log(
            level,
            "event=tpu_send slot=%d leaders=%d delivered=%d failed=%d ms=%.2f",
            self.tracker.current_slot, len(targets), delivered, report.failed, report.elapsed_ms,
        )
        return report

    async def _send_one(self, leader: str, addr: Address, raw: bytes, deadline: float) -> str:
        outcome = "timeout"
        losses = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        connection = await self.cache.get(addr)
                        written = time.perf_counter()
                        await connection.send_transaction(raw)
                        self.metrics.write_ms.observe((time.perf_counter() - written) * 1000)
                        outcome = "delivered"
                        break
                    except ConnectionLost as error:
                        losses += 1
                        if losses > self.retry_count:
                            outcome = "connection_lost"
                            log.warning("event=tpu_leader_failed leader=%s addr=%s outcome=%s error=%s", leader, _format_addr(addr), outcome, error)
                            break
                        log.info("event=tpu_leader_retry leader=%s addr=%s attempt=%d error=%s", leader, _format_addr(addr), losses, error)
                    except ConnectFailed:
                        outcome = "connect_failed"
                        break
                    except LeaderBackoff:
                        outcome = "backoff"
                        break
        except TimeoutError:
            outcome = "timeout"
            log.warning("event=tpu_leader_failed leader=%s addr=%s outcome=timeout timeout_s=%.2f", leader, _format_addr(addr), self.timeout_s)
        self.metrics.sends.labels(leader=leader, outcome=outcome).inc()
        return outcome

    def _refresh_connections(self) -> None:
        window = self.tracker.upcoming(self.fanout_slots + CONNECT_LOOKAHEAD_SLOTS)
        addresses = [addr for _, addr in window]
        self.cache.warm(addresses)
        self.cache.retain(addresses)

    async def _maintain_loop(self) -> None:
        """Keep connections matched to the moving leader window, once per slot update (at most every 50 ms)."""
        while True:
            try:
                await asyncio.wait_for(self.tracker.slot_updated.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            self._refresh_connections()
            await asyncio.sleep(0.05)
