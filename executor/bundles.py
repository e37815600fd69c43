"""Bundles followed, and resent where a region dropped them (issue 23, item 2).

A bundle accepted is not a bundle landed: a region may drop it, lose it at auction, or hold it
for a leader that never comes. Jito says so within moments (jito-labs/jito-docs
lowlatencytxnsend.md, getInflightBundleStatuses): `Invalid` "Bundle ID not in our system (5
minute look back)", `Failed` "All regions that have received the bundle have marked it as
failed and it hasn't been forwarded", `Pending` "Not failed, not landed, not invalid", `Landed`
"Landed on-chain". Before this, a dropped bundle was only found out when its blockhash expired,
about 60 s later, with no second chance.

`BundleTracker` is the worker's one status poller for every bundle in flight: per region, one
getInflightBundleStatuses of up to 5 ids (Jito's limit) at most every `JITO_BUNDLE_STATUS_POLL_MS`,
the ids asked in turn, so a thousand bundles in flight still cost one request per region per
interval. `BundleFollow` is one plan's view: when a region says Failed or Invalid, the same signed
bundle (the same bytes: a signature lands at most once) goes to another region, the best one by
health that has not had it yet, while the plan may still send (no halt, before its deadline) and
its blockhash is still valid. "Not landed" stays the chain's word after expiry (executor/confirm.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from venue.blockengines import BlockEngines
from venue.health import BreakerState, EndpointUnavailable
from venue.jito import InflightStatus, JitoError

log = logging.getLogger("hft.bundles")
MAX_IDS_PER_REQUEST = 5  # getInflightBundleStatuses and getBundleStatuses take at most 5 ids (jito-docs)
DROPPED = ("Failed", "Invalid")
# A resend waits at most this long for a region's token: a bundle that would wait longer lands
# later than the race's other paths or the next resend, and the confirm loop must not stall.
RESEND_MAX_WAIT_S = 1.0
# A plan's bundle goes out at most this many times in all (the first send included): each one spends
# a region's rate limit that other plans need. A bundle that loses its auction (to a competing
# bundle on the same accounts, as several plans on one pool do) reads Failed each slot it loses,
# so a few sends is not enough; 16 covers a burst of plans on one pool (tests/test_race_stack.py).
MAX_BUNDLE_SENDS = 16


class BundleTracker:
    """The worker's shared getInflightBundleStatuses poller."""

    def __init__(self, engines: BlockEngines, poll_s: float = 0.5) -> None:
        self.engines = engines
        self.poll_s = poll_s
        self.watching: dict[str, OrderedDict[str, int]] = {name: OrderedDict() for name in engines.names}
        self.statuses: dict[tuple[str, str], InflightStatus] = {}
        self.updated = asyncio.Event()
        self._asking: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bundle-tracker")

    async def stop(self) -> None:
        for task in (self._task, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, *self._tasks) if t is not None), return_exceptions=True)

    def watch(self, region: str, bundle_id: str) -> None:
        ids = self.watching.setdefault(region, OrderedDict())
        ids[bundle_id] = ids.get(bundle_id, 0) + 1

    def unwatch(self, region: str, bundle_id: str) -> None:
        ids = self.watching.get(region, {})
        left = ids.get(bundle_id, 1) - 1
        if left <= 0:
            ids.pop(bundle_id, None)
            self.statuses.pop((region, bundle_id), None)
        else:
            ids[bundle_id] = left

    def status(self, region: str, bundle_id: str) -> str | None:
        seen = self.statuses.get((region, bundle_id))
        return seen.status if seen is not None else None

    async def _run(self) -> None:
        while True:
            for region, ids in self.watching.items():
                if ids and region not in self._asking and self.engines.board[region].state is not BreakerState.OPEN:
                    self._asking.add(region)
                    task = asyncio.create_task(self._ask(region))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(self.poll_s)

    async def _ask(self, region: str) -> None:
        try:
            ids = self.watching[region]
            wanted = list(ids)[:MAX_IDS_PER_REQUEST]
            for bundle_id in wanted:
                ids.move_to_end(bundle_id)  # the next request asks the others first
            try:
                answers = await self.engines.inflight_statuses(region, wanted)
            except (JitoError, TimeoutError, OSError) as error:
                log.debug("stage=confirm event=bundle_status_failed region=%s error=%s", region, error)
                return
            for bundle_id, answer in zip(wanted, answers):
                if bundle_id in ids:
                    self.statuses[(region, bundle_id)] = answer
            self.updated.set()
            self.updated = asyncio.Event()
        finally:
            self._asking.discard(region)


class BundleFollow:
    """One plan's bundles: which regions have it, what they say, and the resends to other regions."""

    def __init__(
        self,
        plan_id: str,
        raw: bytes,
        bundles: dict[str, str],
        tracker: BundleTracker,
        *,
        send: Callable[[str], Awaitable[str]],
        may_resend: Callable[[], bool],
    ) -> None:
        self.plan_id = plan_id
        self.raw = raw
        self.tracker = tracker
        self.send = send  # (region) -> bundle id: the same bytes to that region, behind the send gate
        self.may_resend = may_resend  # no halt, before the deadline, blockhash still valid
        self.live: dict[str, str] = {}
        self.tried: set[str] = set()
        self.dropped: dict[str, int] = {}  # region -> times it dropped this bundle
        self.resends = 0
        self.sends = len(bundles)
        # A region dropped it and no resend has gone out yet (no region's token was near, or the
        # region did not answer): every check tries again while nothing of it is live.
        self.owed = False
        self.landed_via: str | None = None
        self.landed_slot: int | None = None
        for region, bundle_id in bundles.items():
            self._follow(region, bundle_id)

    def _follow(self, region: str, bundle_id: str) -> None:
        self.live[region] = bundle_id
        self.tried.add(region)
        self.tracker.watch(region, bundle_id)

    def close(self) -> None:
        for region, bundle_id in self.live.items():
            self.tracker.unwatch(region, bundle_id)
        self.live.clear()

    async def check(self) -> None:
        """Read what the regions said; once every region that had the bundle dropped it, resend it
        (again at the next check if it could not go now)."""
        for region, bundle_id in list(self.live.items()):
            status = self.tracker.status(region, bundle_id)
            if status == "Landed":
                seen = self.tracker.statuses.get((region, bundle_id))
                self.landed_via, self.landed_slot = f"bundle:{region}", seen.landed_slot if seen else None
            elif status in DROPPED:
                self.tracker.unwatch(region, bundle_id)
                del self.live[region]
                self.dropped[region] = self.dropped.get(region, 0) + 1
                self.owed = True
                log.info("plan=%s stage=confirm event=bundle_dropped region=%s status=%s bundle=%s", self.plan_id, region, status, bundle_id)
        if self.owed and not self.live:
            await self._resend()

    async def _resend(self) -> None:
        if self.sends >= MAX_BUNDLE_SENDS or not self.may_resend():
            return
        engines = self.tracker.engines
        # A region that has not had it yet; once all have, one that dropped it least often.
        least = min(self.dropped.get(name, 0) for name in engines.names)
        exclude = sorted(name for name in engines.names if name in self.tried and (len(self.tried) < len(engines.names) or self.dropped.get(name, 0) > least))
        try:
            chosen = engines.soonest(exclude=exclude, max_wait_s=RESEND_MAX_WAIT_S)
        except EndpointUnavailable:
            return
        if chosen is None:
            return  # every region's token is far off: the next check tries again
        endpoint, wait = chosen
        if wait > 0:
            await asyncio.sleep(wait)
        if not self.may_resend():
            return
        started = time.perf_counter()
        self.sends += 1
        self.tried.add(endpoint.name)
        try:
            bundle_id = await self.send(endpoint.name)
        except Exception as error:  # a resend's trouble never fails the plan: the next check tries the next region
            log.info("plan=%s stage=confirm event=bundle_resend_failed region=%s error=%s", self.plan_id, endpoint.name, error)
            return
        self.resends += 1
        self.owed = False
        self._follow(endpoint.name, bundle_id)
        log.info(
            "plan=%s stage=confirm event=bundle_resent region=%s bundle=%s ms=%.1f",
            self.plan_id, endpoint.name, bundle_id, (time.perf_counter() - started) * 1000,
        )  # fmt: skip

    async def landed_route(self, timeout_s: float = 0.3) -> str | None:
        """Which region's bundle landed, when the plan's transaction is on chain: the tracker's word, or
        one read of each live region now (bounded: a result is never held long for it)."""
        if self.landed_via is not None or not self.live:
            return self.landed_via

        async def ask(region: str, bundle_id: str) -> str | None:
            try:
                [answer] = await self.tracker.engines.inflight_statuses(region, [bundle_id])
            except Exception:
                return None
            return f"bundle:{region}" if answer.status == "Landed" else None

        asks = [asyncio.ensure_future(ask(region, bundle_id)) for region, bundle_id in self.live.items()]
        done, pending = await asyncio.wait(asks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in done:
            if task.result() is not None:
                self.landed_via = task.result()
        return self.landed_via


__all__ = ["BundleFollow", "BundleTracker"]
