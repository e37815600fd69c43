"""Leader tracking: the current slot, the upcoming leaders and their TPU QUIC addresses.

* ``LeaderTracker``: current slot (websocket ``slotSubscribe``, ``getSlot`` polling as a
  fallback), the leader schedule (``getSlotLeaders`` in batches) and the leaders' QUIC
  addresses (``getClusterNodes`` ``tpuQuic``).

Follows agave (anza-xyz/agave ``tpu-client-next``; constants in anza-xyz/solana-sdk) and
docs/architecture.md section 8. No transaction bytes, keys or seeds are ever logged;
identities are public keys.
"""
from __future__ import annotations

import asyncio
import logging

import aiohttp

from ..rpc import RpcError, SolanaRpc
from ..urls import redacted, shown_url
from .address import Address

log = logging.getLogger("hft.tpu")

# --- protocol constants (where each comes from) --------------------------------------------

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

# Slot tracking: poll getSlot this often without a websocket; a websocket silent this long
# is considered dead; retry the websocket this often while polling.
SLOT_POLL_S = 0.1
WS_STALE_S = 2.0
WS_RETRY_S = 5.0


def _parse_addr(value: str | None) -> Address | None:
    """``"ip:port"`` / ``"[v6]:port"`` from getClusterNodes, or None if absent or malformed."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


# --- leader tracking ----------------------------------------------------------------------


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
        self._session = session  # for the websocket (slotSubscribe); the HTTP calls go through _json_rpc
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
        self._set_slot(await self._json_rpc.slot("processed"))
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
        leaders = await self._json_rpc.slot_leaders(start, LEADER_BATCH_SLOTS)
        for offset, leader in enumerate(leaders):
            self._leaders[start + offset] = leader
        self._leaders_end = max(self._leaders_end, start + len(leaders))

    async def _refresh_nodes(self) -> None:
        nodes: dict[str, Address] = {}
        for node in await self._json_rpc.cluster_nodes():
            addr = _parse_addr(node.tpu_quic)
            if addr is None:  # legacy nodes: QUIC listens on the UDP tpu port + 6
                legacy = _parse_addr(node.tpu)
                addr = (legacy[0], legacy[1] + QUIC_PORT_OFFSET) if legacy else None
            if addr is not None and node.pubkey:
                nodes[node.pubkey] = addr
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
                    log.warning("event=tpu_slot_ws_failed fallback=poll error=%s", redacted(f"{type(error).__name__}: {error}", self.ws_url))
            await self._poll_slots(WS_RETRY_S if self.ws_url else float("inf"))

    async def _follow_ws(self) -> None:
        assert self._session is not None
        async with self._session.ws_connect(self.ws_url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=1.0)) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "slotSubscribe"})
            self.slot_source = "ws"
            log.info("event=tpu_slot_ws_subscribed url=%s", shown_url(self.ws_url))
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
                self._set_slot(await self._json_rpc.slot("processed"))
            except RpcError as error:
                log.warning("event=tpu_slot_poll_failed error=%s", error)
            await asyncio.sleep(SLOT_POLL_S)
