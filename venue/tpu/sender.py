"""The sender: fans one signed transaction out to the upcoming leaders over cached QUIC connections.

* ``TpuClient``: ``send(raw)`` writes the same bytes to every upcoming leader at once, one
  transaction per unidirectional stream, and reports who acknowledged it (``TpuSendReport``,
  the ``executor_tpu_*`` metrics). It drives a ``LeaderTracker`` (``leaders``) and a
  ``ConnectionCache`` (``connections``).

"Delivered" here means the leader's QUIC stack acknowledged every byte and the FIN of the
stream (a QUIC ACK, one round trip), which is stronger than agave's ``write_all`` returning
(bytes queued locally). It still does not mean the transaction will land: a TPU never
answers, so landing is checked with ``getSignatureStatuses`` by the caller, who resends the
same bytes (safe: a signature is processed at most once) until its blockhash expires.

No transaction bytes, keys or seeds are ever logged; identities are public keys.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from solders.keypair import Keypair

from venue import PACKET_DATA_SIZE

from .address import Address, _format_addr
from .connections import ConnectFailed, ConnectionCache, ConnectionLost, LeaderBackoff
from .leaders import CONNECT_LOOKAHEAD_SLOTS, LeaderTracker

log = logging.getLogger("hft.tpu")

# PACKET_DATA_SIZE (venue.protocol): the server closes the *whole connection* (code 5
# "invalid_stream") on a bigger or an empty stream (handle_chunks,
# streamer/src/nonblocking/quic.rs), so both are refused before sending.

_WRITE_MS_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2000)


# --- the client ---------------------------------------------------------------------------


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
            # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the
            # event is set (gh-86296), and this loop then outlived stop(), which waited on it forever.
            updated = asyncio.ensure_future(self.tracker.slot_updated.wait())
            try:
                await asyncio.wait({updated}, timeout=0.5)
            finally:
                updated.cancel()
            self._refresh_connections()
            await asyncio.sleep(0.05)
