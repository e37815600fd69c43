"""Stake-weighted QoS on the TPU, as agave's streamer does it, and an unstaked flood to load it.

Sources (anza-xyz/agave): ``streamer/src/nonblocking/stream_throttle.rs`` (the per-100 ms
stream budget, ``StakedStreamLoadEMA``, ``throttle_stream``), ``streamer/src/nonblocking/swqos.rs``
and ``quic.rs`` (the staked and unstaked connection tables, ``prune_unstaked_connection_table``
down to 90 % by ``prune_oldest``, ``prune_random`` for staked peers, ``ConnectionTable``).

Off unless enabled: a ``TpuQuicServer`` whose ``Qos`` is disabled (or absent) behaves as before.

Scaling: agave's numbers are for a validator reading 500 streams per ms; a 2-core machine
running Python QUIC reads a few thousand per second. So the TPU's whole budget is
``QosConfig.max_streams_per_ms`` (2 by default), the unstaked per-connection budget and the
per-connection stream caps are divided by ``QosConfig.scale`` (10: 200 TPS becomes 20, i.e.
2 streams per 100 ms interval, and 128 concurrent streams 12), and the connection-table caps
are set directly (8 unstaked / 32 staked instead of 2,000 / 2,000).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from dataclasses import asdict, dataclass, field
from collections import deque
from typing import Any, Protocol

from solders.keypair import Keypair
from solders.pubkey import Pubkey

log = logging.getLogger("localnet.qos")


class QosConnection(Protocol):
    """What QoS reads and keeps on one TPU connection (tpu._TpuConnectionProtocol), declared here so
    the TPU imports QoS and not the other way round."""

    peer: str | None
    released: bool
    qos_stake: int
    qos_table: str
    qos_last_update: float
    qos_interval_start: float
    qos_stream_count: int
    qos_backlog: deque[bytes]
    qos_timer: asyncio.TimerHandle | None

    def close_with(self, error_code: int, reason: str) -> None: ...


class QosServer(Protocol):
    """The TPU server QoS hands an admitted stream to (tpu.TpuQuicServer)."""

    def _hand_over(self, raw: bytes, peer: str) -> None: ...

# --- agave constants (streamer/src/nonblocking/stream_throttle.rs, quic.rs, quic-definitions) ---
MAX_UNSTAKED_TPS = 200  # stream_throttle.rs: max TPS of one unstaked connection
EXPECTED_UNSTAKED_STREAMS_PERCENT = 20  # stream_throttle.rs: share kept away from staked peers
STREAM_THROTTLING_INTERVAL_MS = 100  # stream_throttle.rs
STREAM_LOAD_EMA_INTERVAL_MS = 5  # stream_throttle.rs
STREAM_LOAD_EMA_INTERVAL_COUNT = 40  # stream_throttle.rs
STAKED_THROTTLING_ON_LOAD_THRESHOLD_PERCENT = 95  # stream_throttle.rs
# streamer/src/quic.rs: 500 in current agave (250 and 500 unstaked connections in earlier releases).
DEFAULT_MAX_STREAMS_PER_MS = 500
DEFAULT_MAX_UNSTAKED_CONNECTIONS = 2000
DEFAULT_MAX_STAKED_CONNECTIONS = 2000
QUIC_MAX_UNSTAKED_CONCURRENT_STREAMS = 128  # solana-quic-definitions
QUIC_MAX_STAKED_CONCURRENT_STREAMS = 512  # solana-quic-definitions
PRUNE_TABLE_TO_PERCENTAGE = 90  # swqos.rs prune_unstaked_connection_table
# ConnectionEntry dropped from the table (quic.rs CONNECTION_CLOSE_CODE_DROPPED_ENTRY).
CONNECTION_CLOSE_CODE_DROPPED_ENTRY = 1
CONNECTION_CLOSE_REASON_DROPPED_ENTRY = "dropped"

_EMA_MULTIPLIER = 1024


@dataclass
class FloodConfig:
    """A background flood: ``connections`` unstaked QUIC clients sending ``rate`` streams/s in all."""

    connections: int = 0
    rate: float = 200.0
    size: int = 600  # bytes per stream: transaction-sized (PACKET_DATA_SIZE is 1232)

    @property
    def on(self) -> bool:
        return self.connections > 0 and self.rate > 0


@dataclass
class QosConfig:
    enabled: bool = False
    stakes: dict[str, int] = field(default_factory=dict)  # identity (base58) -> lamports
    scale: float = 10.0  # the unstaked TPS and per-connection stream caps are divided by this
    max_streams_per_ms: float = 2.0  # the TPU's whole read budget; agave DEFAULT_MAX_STREAMS_PER_MS = 500
    max_unstaked_connections: int = 8  # agave 500
    max_staked_connections: int = 32  # agave 2,000
    flood: FloodConfig = field(default_factory=FloodConfig)
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, data: dict[str, Any]) -> None:
        """Apply a partial JSON update; ``stakes`` merges (stake 0 removes), ``flood`` merges."""
        unknown = set(data) - {"enabled", "stakes", "scale", "max_streams_per_ms", "max_unstaked_connections", "max_staked_connections", "flood", "seed"}
        if unknown:
            raise ValueError(f"unknown qos keys: {sorted(unknown)}")
        if "stakes" in data:
            stakes = dict(self.stakes)
            for key, value in parse_stakes(data["stakes"]).items():
                if value:
                    stakes[key] = value
                else:
                    stakes.pop(key, None)
            self.stakes = stakes
            if data["stakes"] and "enabled" not in data:
                self.enabled = True
        if "flood" in data:
            flood = data["flood"]
            if not isinstance(flood, dict):
                raise TypeError("flood must be an object")
            bad = set(flood) - {"connections", "rate", "size"}
            if bad:
                raise ValueError(f"unknown flood keys: {sorted(bad)}")
            self.flood = FloodConfig(
                connections=int(flood.get("connections", self.flood.connections)),
                rate=float(flood.get("rate", self.flood.rate)),
                size=int(flood.get("size", self.flood.size)),
            )
            if not 1 <= self.flood.size <= 1232:
                raise ValueError("flood size must be 1..1232 bytes")
            if self.flood.on and "enabled" not in data:
                self.enabled = True
        for name in ("scale", "max_streams_per_ms"):
            if name in data:
                value = float(data[name])
                if value <= 0:
                    raise ValueError(f"{name} must be > 0")
                setattr(self, name, value)
        for name in ("max_unstaked_connections", "max_staked_connections", "seed"):
            if name in data:
                setattr(self, name, int(data[name]))
        if "enabled" in data:
            self.enabled = bool(data["enabled"])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "QosConfig":
        config = cls()
        config.update(data)
        return config


def parse_stakes(value: Any) -> dict[str, int]:
    """``{"PUBKEY": lamports}`` or ``["PUBKEY=lamports", ...]`` -> {base58: lamports}."""
    items = value.items() if isinstance(value, dict) else (str(v).partition("=")[::2] for v in value)
    stakes = {}
    for key, lamports in items:
        stake = int(lamports)
        if stake < 0:
            raise ValueError("stake must be >= 0")
        stakes[str(Pubkey.from_string(str(key).strip()))] = stake
    return stakes


def _ema(current: int, recent: int) -> int:
    """StakedStreamLoadEMA::ema_function (integer math with a 1024 multiplier)."""
    factor = 2 * _EMA_MULTIPLIER // (STREAM_LOAD_EMA_INTERVAL_COUNT + 1)
    return (recent * factor + current * (_EMA_MULTIPLIER - factor)) // _EMA_MULTIPLIER


class Qos:
    """The cluster's QoS settings, shared by every leader's TPU (each keeps its own tables and load)."""

    def __init__(self, config: QosConfig | None = None) -> None:
        self.config = config or QosConfig()
        self.flood_peers: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def stake_of(self, peer: str | None) -> int:
        return self.config.stakes.get(peer, 0) if peer else 0

    @property
    def total_stake(self) -> int:
        return sum(self.config.stakes.values())

    # scaled agave limits ------------------------------------------------------------
    @property
    def max_streams_per_ms(self) -> float:
        return self.config.max_streams_per_ms

    @property
    def max_unstaked_per_interval(self) -> int:
        """max_unstaked_load_in_throttling_window = MAX_UNSTAKED_TPS x 100 ms / 1000 (scaled)."""
        if self.config.max_unstaked_connections <= 0:
            return 0
        return max(1, int(MAX_UNSTAKED_TPS / self.config.scale * STREAM_THROTTLING_INTERVAL_MS / 1000))

    @property
    def max_staked_load_in_ms(self) -> float:
        share = EXPECTED_UNSTAKED_STREAMS_PERCENT if self.config.max_unstaked_connections > 0 else 0
        return self.max_streams_per_ms * (100 - share) / 100

    @property
    def max_staked_per_interval(self) -> int:
        return int(self.max_staked_load_in_ms * STREAM_THROTTLING_INTERVAL_MS)

    @property
    def staked_throttling_threshold(self) -> int:
        """95 % of the staked load one 5 ms EMA interval may carry."""
        return int(self.max_staked_load_in_ms * STREAM_LOAD_EMA_INTERVAL_MS * STAKED_THROTTLING_ON_LOAD_THRESHOLD_PERCENT / 100)

    def backlog_cap(self, stake: int) -> int:
        """Streams a throttled connection may have waiting: its concurrent-stream limit, scaled."""
        streams = QUIC_MAX_STAKED_CONCURRENT_STREAMS if stake else QUIC_MAX_UNSTAKED_CONCURRENT_STREAMS
        return max(1, int(streams / self.config.scale))


@dataclass
class QosStats:
    staked_connections: int = 0
    unstaked_connections: int = 0
    evictions_unstaked: int = 0
    evictions_staked: int = 0
    throttled_staked_streams: int = 0  # streams held to a later interval (agave: sleep)
    throttled_unstaked_streams: int = 0
    dropped_staked_streams: int = 0  # held streams lost: backlog full or connection evicted
    dropped_unstaked_streams: int = 0
    flood_streams: int = 0  # read from the flood's peers (never handed to the cluster)
    stream_load_ema: int = 0
    staked_throttling: bool = False


class QosState:
    """One TPU's connection tables, load EMA and per-connection stream budgets."""

    def __init__(self, server: QosServer, qos: Qos) -> None:
        self.server = server
        self.qos = qos
        self.stats = QosStats()
        self.staked: set[QosConnection] = set()
        self.unstaked: set[QosConnection] = set()
        self._load_ema = 0
        self._load_recent = 0
        self._ema_updated = time.monotonic()

    # --- connection table (swqos.rs) -----------------------------------------------------
    def admit(self, protocol: "QosConnection") -> None:
        """Put an accepted connection in its table, evicting as agave does when it is full."""
        stake = self.qos.stake_of(protocol.peer)
        protocol.qos_stake = stake
        protocol.qos_last_update = time.monotonic()
        if stake:
            if len(self.staked) >= self.qos.config.max_staked_connections:
                # prune_random(PRUNE_RANDOM_SAMPLE_SIZE, stake): agave samples 2 entries and drops
                # the lower-staked one if below the newcomer's stake; here, deterministically,
                # the lowest-staked connection below it.
                lowest = min(self.staked, key=lambda p: (p.qos_stake, p.qos_last_update), default=None)
                if lowest is not None and lowest.qos_stake < stake:
                    self._evict(lowest, staked=True)
            if len(self.staked) < self.qos.config.max_staked_connections:
                self.staked.add(protocol)
                protocol.qos_table = "staked"
                return
            # No room among staked peers: agave falls back to the unstaked table.
        self._prune_unstaked()
        self.unstaked.add(protocol)
        protocol.qos_table = "unstaked"

    def _prune_unstaked(self) -> None:
        cap = self.qos.config.max_unstaked_connections
        if len(self.unstaked) < cap:
            return
        keep = int(cap * PRUNE_TABLE_TO_PERCENTAGE / 100)
        # prune_oldest: the connections whose last stream is oldest go first.
        for protocol in sorted(self.unstaked, key=lambda p: p.qos_last_update)[: len(self.unstaked) - keep]:
            self._evict(protocol, staked=False)

    def _evict(self, protocol: "QosConnection", *, staked: bool) -> None:
        if staked:
            self.stats.evictions_staked += 1
        else:
            self.stats.evictions_unstaked += 1
        log.info("tpu qos: evicting %s connection of %s", "staked" if staked else "unstaked", protocol.peer)
        protocol.close_with(CONNECTION_CLOSE_CODE_DROPPED_ENTRY, CONNECTION_CLOSE_REASON_DROPPED_ENTRY)

    def release(self, protocol: "QosConnection") -> None:
        self.staked.discard(protocol)
        self.unstaked.discard(protocol)
        lost = len(protocol.qos_backlog)
        if lost:
            protocol.qos_backlog.clear()
            if protocol.qos_stake:
                self.stats.dropped_staked_streams += lost
            else:
                self.stats.dropped_unstaked_streams += lost
        if protocol.qos_timer is not None:
            protocol.qos_timer.cancel()
            protocol.qos_timer = None

    # --- load EMA (StakedStreamLoadEMA) --------------------------------------------------
    def _update_ema_if_needed(self) -> None:
        now = time.monotonic()
        elapsed_ms = (now - self._ema_updated) * 1000
        if elapsed_ms < STREAM_LOAD_EMA_INTERVAL_MS:
            return
        self._ema_updated = now
        ema = _ema(self._load_ema, self._load_recent)
        self._load_recent = 0
        for _ in range(max(0, int(elapsed_ms) - 1) // STREAM_LOAD_EMA_INTERVAL_MS):
            ema = _ema(ema, 0)
            if ema == 0:
                break
        self._load_ema = ema
        threshold = self.qos.staked_throttling_threshold
        if threshold > 0:
            self.stats.staked_throttling = ema >= threshold
        self.stats.stream_load_ema = ema

    def _capacity(self, stake: int) -> int:
        """available_load_capacity_in_throttling_duration."""
        unstaked = self.qos.max_unstaked_per_interval
        if not stake:
            return unstaked
        if not self.stats.staked_throttling:
            return self.qos.max_staked_per_interval
        total = self.qos.total_stake
        if total <= 0:
            return unstaked + 1
        return max(self.qos.max_staked_per_interval * stake // total, unstaked + 1)

    # --- streams (throttle_stream) -------------------------------------------------------
    def on_stream(self, protocol: "QosConnection", raw: bytes) -> None:
        """A complete stream: read it now if the connection's budget allows, else hold it."""
        if protocol.qos_backlog or not self._take_budget(protocol):
            stake = protocol.qos_stake
            if len(protocol.qos_backlog) >= self.qos.backlog_cap(stake):
                # aioquic grants stream credit once a stream's data has arrived, so the client
                # cannot be made to wait as quinn makes it; a stream beyond the concurrent
                # streams the client could have open is dropped.
                if stake:
                    self.stats.dropped_staked_streams += 1
                else:
                    self.stats.dropped_unstaked_streams += 1
                return
            if stake:
                self.stats.throttled_staked_streams += 1
            else:
                self.stats.throttled_unstaked_streams += 1
            protocol.qos_backlog.append(raw)
            self._schedule_drain(protocol)
            return
        self._read(protocol, raw)

    def _take_budget(self, protocol: "QosConnection") -> bool:
        now = time.monotonic()
        if (now - protocol.qos_interval_start) * 1000 > STREAM_THROTTLING_INTERVAL_MS:
            protocol.qos_interval_start = now  # reset_throttling_params_if_needed
            protocol.qos_stream_count = 0
        if protocol.qos_stream_count >= self._capacity(protocol.qos_stake):
            return False
        protocol.qos_stream_count += 1
        return True

    def _schedule_drain(self, protocol: "QosConnection") -> None:
        if protocol.qos_timer is not None:
            return
        wait = max(0.0, protocol.qos_interval_start + STREAM_THROTTLING_INTERVAL_MS / 1000 - time.monotonic()) + 0.001
        protocol.qos_timer = asyncio.get_running_loop().call_later(wait, self._drain, protocol)

    def _drain(self, protocol: "QosConnection") -> None:
        """The throttle's sleep is over: read the held streams the new interval's budget allows."""
        protocol.qos_timer = None
        if protocol.released:
            return
        while protocol.qos_backlog and self._take_budget(protocol):
            self._read(protocol, protocol.qos_backlog.popleft())
        if protocol.qos_backlog:
            self._schedule_drain(protocol)

    def _read(self, protocol: "QosConnection", raw: bytes) -> None:
        if protocol.qos_stake:
            self._load_recent += 1  # increment_load counts staked streams only
        self._update_ema_if_needed()
        protocol.qos_last_update = time.monotonic()
        if protocol.peer in self.qos.flood_peers:
            self.stats.flood_streams += 1
            return
        self.server._hand_over(raw, protocol.peer or "")

    def snapshot(self) -> dict[str, Any]:
        self.stats.staked_connections = len(self.staked)
        self.stats.unstaked_connections = len(self.unstaked)
        return asdict(self.stats)


class UnstakedFlood:
    """N unstaked QUIC clients sending transaction-sized streams at a total rate.

    Each client binds to its own loopback address (127.1.x.y, a new one per reconnection) so
    it counts as a distinct peer IP, as a flood from many hosts would, and reconnects when
    the leader evicts it. Payloads are random bytes (seeded); the TPU reads them through the
    QoS layer and then discards them, so the flood loads the TPU, not the ledger.
    """

    def __init__(self, qos: Qos, targets: list[tuple[str, int]], config: FloodConfig, seed: int) -> None:
        self.qos = qos
        self.targets = targets
        self.config = config
        self.rng = random.Random(seed)
        self.sent = 0
        self.connections = 0
        self._tasks: list[asyncio.Task] = []
        self._address = 0

    def start(self) -> None:
        for index in range(self.config.connections):
            seed = bytes(self.rng.getrandbits(8) for _ in range(32))
            self._tasks.append(asyncio.create_task(self._client(index, Keypair.from_seed(seed)), name=f"tpu-flood-{index}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def _next_address(self) -> str:
        self._address += 1
        n = self._address % (254 * 254)
        return f"127.1.{n // 254 + 1}.{n % 254 + 1}"

    async def _client(self, index: int, identity: Keypair) -> None:
        from aioquic.asyncio.protocol import QuicConnectionProtocol
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection

        from venue.tpu.connections import node_certificate

        peer = str(identity.pubkey())
        self.qos.flood_peers.add(peer)
        certificate, key = node_certificate(identity)
        interval = self.config.connections / self.config.rate
        loop = asyncio.get_running_loop()
        rng = random.Random(self.rng.getrandbits(64))
        try:
            while True:
                host, port = self.targets[index % len(self.targets)]
                configuration = QuicConfiguration(
                    is_client=True, alpn_protocols=["solana-tpu"], verify_mode=ssl.CERT_NONE, server_name="localhost", idle_timeout=10.0
                )
                configuration.certificate, configuration.private_key = certificate, key
                transport = None
                try:
                    transport, client = await loop.create_datagram_endpoint(
                        lambda: QuicConnectionProtocol(QuicConnection(configuration=configuration)), local_addr=(self._next_address(), 0)
                    )
                    client.connect((host, port))
                    await asyncio.wait_for(client.wait_connected(), 2.0)
                    self.connections += 1
                    quic = client._quic
                    while not client._closed.is_set():
                        stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
                        quic.send_stream_data(stream_id, rng.randbytes(self.config.size), end_stream=True)
                        client.transmit()
                        self.sent += 1
                        await asyncio.sleep(interval)
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    pass
                finally:
                    if transport is not None:
                        transport.close()
                await asyncio.sleep(0.05)  # evicted or refused: come back, as a flood does
        finally:
            self.qos.flood_peers.discard(peer)
