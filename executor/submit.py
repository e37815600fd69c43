"""Submit: put the plan's signed bytes on the wire the way the plan asks (rpc, jito_bundle, tpu_direct, race).

Resending the same bytes is always safe (a signature is processed at most once), so a
retry never risks a second landing. `refusal` is the last check before a plan commits to
the wire: the workflow's halt signal, the worker's own halt flag (a signal cannot stop a
local activity already running) and the plan's deadline.

A route is one way to the wire, named as results and metrics show it: `rpc` (the RPC node, its
backups get copies), `tpu` (the upcoming leaders over QUIC), `bundle:<region>` (a one-transaction
bundle to that block-engine region) and `jito_transaction:<region>` (Jito's sendTransaction there).
`race` (issue 23) sends the one signed transaction on every useful route at once: a bundle to the
best `RACE_BUNDLE_REGIONS` regions that take a request now (venue/blockengines.py `ready`: a region
whose rate limit would make it wait is skipped, the other routes are already out), Jito's
sendTransaction to the next best, the TPU and RPC. Racing is safe because it is one signature:
however many copies go out, at most one lands. Each route passes the send gate on its own, in the
step its bytes leave; the race says "nothing left" only when every route took nothing.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence


from workflows.events import ErrorCode
from workflows.stages import SignedTransaction, Submission

from .errors import GateRefusal, PlanFailure, fail
from venue.blockengines import BlockEngines
from venue.health import EndpointUnavailable
from venue.jito import JitoClient, JitoError, JitoRateLimited, JitoUnavailable
from venue.rpc import RpcRateLimited, RpcRefused, SolanaRpc
from venue.tpu import TpuClient


class TpuUndelivered(Exception):
    """Every leader refused or timed out: the outcome is unknown until the chain says."""

log = logging.getLogger("hft.submit")
SENDABLE = ("rpc", "jito_bundle", "tpu_direct", "race")
# A `jito_bundle` whose region does not answer goes to the next; at most this many regions in all.
BUNDLE_FAILOVER_REGIONS = 3


@dataclass(frozen=True)
class RaceSettings:
    """How a race fans out (settings/executor.py `RaceSettings`)."""

    bundle_regions: int = 2  # RACE_BUNDLE_REGIONS: regions that get it as a bundle
    jito_transaction: bool = True  # RACE_JITO_TRANSACTION: also Jito's sendTransaction, in one more region
    settle_s: float = 0.2  # RACE_SETTLE_MS: once one route accepted, how long the rest may take before execute returns


@dataclass(frozen=True)
class Sent:
    """One route's accepted send: its route name and, for a bundle, the bundle id."""

    route: str
    bundle_id: str | None = None

    @property
    def region(self) -> str | None:
        return self.route.partition(":")[2] or None if self.route.startswith("bundle:") else None


class Submitter:
    def __init__(
        self,
        rpc: SolanaRpc,
        jito: JitoClient,
        halted: Callable[[], str | None],
        backups: Sequence[SolanaRpc] = (),
        tpu: TpuClient | None = None,
        unheard: Callable[[], str | None] = lambda: None,
        engines: BlockEngines | None = None,
        race: RaceSettings = RaceSettings(),
        slot: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.rpc = rpc
        self.jito = jito
        # The block-engine regions, by health (JITO_BLOCK_ENGINE_URLS); without them a bundle goes to `jito` alone.
        self.engines = engines
        self.race = race
        self.slot = slot  # the processed slot now (the TPU client's view), for the result's slots to land
        self.tpu = tpu
        self.halted = halted
        self.unheard = unheard  # why the kill switch cannot be read now (fail-closed), or None
        self.backups = list(backups)  # RPC_BACKUPS: get a copy of every rpc send, never waited on
        self._background: set[asyncio.Task] = set()
        self.in_flight = 0  # sends past the gate (backup copies included), not yet answered
        self._quiet = asyncio.Event()
        self._quiet.set()

    async def submit(self, method: str, signed: SignedTransaction, *, halt_reason: str | None = None, deadline_ms: int | None = None) -> Submission:
        """The plan's send, behind the gate (`refusal`) checked in the same step as the in-flight slot is
        taken, right before the bytes leave: a halt applied while the caller awaited something (a record
        claim) refuses it here, and one applied after it waits, in the kill switch's drain, for it."""
        if method not in SENDABLE:
            fail(ErrorCode.SUBMIT_REJECTED, f"execution method {method} is not available")
        gate = None if deadline_ms is None else (lambda: self.refusal(halt_reason, deadline_ms))
        raw = base64.b64decode(signed.transaction)
        slot = self.slot()
        sent = await self._race(raw, gate) if method == "race" else [await self.send_route(method, raw, gate=gate)]
        bundles = tuple((s.region, s.bundle_id) for s in sent if s.region is not None and s.bundle_id is not None)
        return Submission(
            signature=signed.signature,
            bundle_id=next((s.bundle_id for s in sent if s.bundle_id is not None), None),
            sent_at_ms=int(time.time() * 1000),
            sent_slot=slot,
            routes=tuple(s.route for s in sent),
            bundles=bundles,
        )

    def refusal(self, halt_reason: str | None, deadline_ms: int) -> GateRefusal | None:
        """Why a plan must not go on the wire now, and whether that is final: a halt, or its deadline
        (final); a kill switch this worker cannot hear (not final: it may be heard again before the deadline)."""
        reason = halt_reason or self.halted()
        if reason is not None:
            return GateRefusal(ErrorCode.HALTED, f"halted before submit: {reason}", final=True)
        if time.time() * 1000 > deadline_ms:
            return GateRefusal(ErrorCode.DEADLINE_EXCEEDED, "plan deadline passed before anything was sent", final=True)
        unheard = self.unheard()
        if unheard is not None:
            return GateRefusal(ErrorCode.HALTED, f"not sent while {unheard}", final=False)
        return None

    async def drained(self) -> None:
        """Until no send is under way (a halt's acknowledgment waits for this)."""
        await self._quiet.wait()

    async def send(self, method: str, raw: bytes, *, gate: Callable[[], GateRefusal | None] | None = None) -> str | None:
        """Send once; returns the bundle id for jito_bundle. Uncertain failures raise for a retry."""
        return (await self.send_route(method, raw, gate=gate)).bundle_id

    async def send_route(self, route: str, raw: bytes, *, gate: Callable[[], GateRefusal | None] | None = None) -> Sent:
        """Send once on one route (a method, or a route name of the module doc); uncertain failures raise.

        The slot is taken and ``gate`` asked in one step (no await between them, nor between them and
        the bytes leaving), so the kill switch either sees this send counted or this send sees its halt.
        A bundle for the regions' choice (`jito_bundle` with regions) goes by `_bundle_to_a_region`."""
        if route == "jito_bundle" and self.engines is not None:
            return await self._bundle_to_a_region(raw, gate)
        self._take_slot()
        try:
            refusal = gate() if gate is not None else None
            if refusal is not None:
                refusal.fail()  # nothing left: the caller voids or withholds
            return await self._send(route, raw)
        finally:
            self._give_slot()

    async def _bundle_to_a_region(self, raw: bytes, gate: Callable[[], GateRefusal | None] | None) -> Sent:
        """The bundle to the region whose rate limit frees first, after waiting for it outside the slot
        (the gate is asked after the wait). A region that refuses it (a lagging region that does not
        know its blockhash yet, a 429) took nothing, and one that does not answer (a timeout, a
        blackhole) may have it: either way the same bytes go to the next region, up to
        `BUNDLE_FAILOVER_REGIONS` regions (at most one copy lands). The gate's own refusal (halt,
        deadline) ends it. Once a copy may be out, the end is that uncertainty, never "nothing left"."""
        tried: list[str] = []
        maybe_out: JitoUnavailable | None = None
        refused: PlanFailure | None = None
        while len(tried) < BUNDLE_FAILOVER_REGIONS:
            try:
                endpoint, wait = self.engines.soonest(exclude=tried)  # type: ignore[misc]: no max_wait_s, never None
            except EndpointUnavailable as error:
                if maybe_out is None and refused is None:
                    fail(ErrorCode.RATE_LIMITED, f"no block-engine region takes a bundle now: {error}")
                break
            if endpoint.name in tried:
                break  # every region was tried
            if wait > 0:
                await asyncio.sleep(wait)  # its turn under the region's rate limit, instead of a 429
            tried.append(endpoint.name)
            try:
                return await self.send_route(f"bundle:{endpoint.name}", raw, gate=gate)
            except JitoUnavailable as error:
                log.info("stage=submit event=region_unanswered region=%s error=%s: the same bundle to the next region", endpoint.name, error)
                maybe_out = error
            except PlanFailure as failure:
                if failure.code in (ErrorCode.HALTED, ErrorCode.DEADLINE_EXCEEDED):
                    if maybe_out is not None:
                        raise maybe_out from None
                    raise  # the gate: nothing more goes out
                log.info("stage=submit event=region_refused region=%s code=%s error=%s: the same bundle to the next region", endpoint.name, failure.code.value, failure.message)
                refused = failure if refused is None or not refused.retryable else refused  # a rate limit: the retry may get through
        if maybe_out is not None:
            raise maybe_out
        raise refused  # type: ignore[misc]: the loop ran at least once

    async def _race(self, raw: bytes, gate: Callable[[], GateRefusal | None] | None) -> list[Sent]:
        """Every useful route at once (module doc). Returns the routes that accepted (and those whose
        answer is not in yet, once one accepted: they may be out too); raises as a single send would
        when none accepted: the first uncertain error (it may be out), else the gate's refusal, else a
        retryable failure (a rate limit: nothing left), else the refusal (nothing left anywhere)."""
        # The TPU first: its copy reaches the leader without a hop (measured on the hostile market, it
        # lands every plan, in the slot it arrives at p90), and each route's send starts in this order.
        routes: list[str] = ["tpu_direct"] if self.tpu is not None else []
        if self.rpc is not None:
            routes.append("rpc")
        if self.engines is not None:
            routes += [f"bundle:{endpoint.name}" for endpoint in self.engines.ready(self.race.bundle_regions)]
            if self.race.jito_transaction:
                routes += [f"jito_transaction:{endpoint.name}" for endpoint in self.engines.ready(1)]
        elif self.jito is not None:
            routes.append("jito_bundle")
        tasks = {asyncio.ensure_future(self.send_route(route, raw, gate=gate)): route for route in routes}
        pending = set(tasks)
        settle_until: float | None = None
        while pending:
            timeout = None if settle_until is None else max(0.0, settle_until - time.monotonic())
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break  # the settle time is over: the rest go on in the background
            if settle_until is None and any(not t.cancelled() and t.exception() is None for t in done):
                settle_until = time.monotonic() + self.race.settle_s
        for task in pending:  # still under way (a slow region): its slot is held until it answers
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        finished = [t for t in tasks if t.done() and not t.cancelled()]
        sent = [t.result() for t in finished if t.exception() is None]
        unknown = [t for t in finished if t.exception() is not None and not isinstance(t.exception(), PlanFailure)]
        failures = [t.exception() for t in finished if isinstance(t.exception(), PlanFailure)]
        log.debug("race routes=%s accepted=%s unknown=%d refused=%d", routes, [s.route for s in sent], len(unknown), len(failures))
        if sent:
            # the routes still under way, or whose answer was lost, may be out too
            return sent + [Sent(_route_name(tasks[t])) for t in (*unknown, *pending)]
        if unknown:
            raise unknown[0].exception()
        if not failures:
            fail(ErrorCode.SUBMIT_REJECTED, "no route to the wire is available on this worker")
        gate_refusal = next((f for f in failures if f.code in (ErrorCode.HALTED, ErrorCode.DEADLINE_EXCEEDED)), None)
        raise gate_refusal or next((f for f in failures if f.retryable), failures[0])

    def _take_slot(self) -> None:
        self.in_flight += 1
        self._quiet.clear()

    def _give_slot(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._quiet.set()

    async def _send(self, method: str, raw: bytes) -> Sent:
        if method.startswith("bundle:"):
            return await self._bundle_to(method.partition(":")[2], raw)
        if method.startswith("jito_transaction:"):
            region = method.partition(":")[2]
            with _engine_answer(f"block engine {region}", "transaction"):
                await self.engines.send_transaction(self.engines.board[region], raw)
            return Sent(method)
        return Sent(*(await self._send_method(method, raw)))

    async def _bundle_to(self, region: str, raw: bytes) -> Sent:
        """A one-transaction bundle to `region`, whose token the caller took."""
        with _engine_answer(f"block engine {region}", "bundle"):
            bundle_id = await self.engines.send_bundle(self.engines.board[region], raw)
        return Sent(f"bundle:{region}", bundle_id)

    async def _send_method(self, method: str, raw: bytes) -> tuple[str, str | None]:
        if method == "rpc":
            try:
                await self.rpc.send_transaction(raw)
            except RpcRefused as error:
                fail(ErrorCode.SUBMIT_REJECTED, f"RPC refused the transaction: {error}")
            except RpcRateLimited:
                fail(ErrorCode.RATE_LIMITED, "RPC rate limited (HTTP 429)")
            except BaseException:
                self._copy_to_backups(raw)  # unknown whether it arrived: it may be out, so the copies may go too
                raise  # RpcUnavailable: the caller follows the signature on chain
            # Copies only once the primary has not refused: a refusal must mean nothing left.
            self._copy_to_backups(raw)
            return "rpc", None
        if method == "tpu_direct":
            if self.tpu is None:
                fail(ErrorCode.SUBMIT_REJECTED, "direct TPU submission is not available on this worker (its TPU client did not start)")
            report = await self.tpu.send(raw)
            if report.delivered == 0:
                # No leader acknowledged it; confirm resends on every leader window until it expires.
                raise TpuUndelivered(f"no leader acknowledged the transaction: {dict(report.outcomes)}")
            return "tpu", None
        if method == "jito_bundle":
            with _engine_answer("block engine", "bundle"):
                return "bundle", await self.jito.send_bundle([raw])
        fail(ErrorCode.SUBMIT_REJECTED, f"execution method {method} is not available")


    def _copy_to_backups(self, raw: bytes) -> None:
        """Copies are sends too: each holds an in-flight slot until answered, so a halt is acknowledged only
        once they are out (they are started before the primary send's slot is given back)."""
        for backup in self.backups:
            self._take_slot()
            task = asyncio.create_task(_copy_to(backup, raw))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(lambda _: self._give_slot())


@contextlib.contextmanager
def _engine_answer(engine: str, what: str):
    """A block engine's answer in the plan's terms, once for every Jito send: a 429 is RATE_LIMITED (nothing
    accepted: the retry sends the same bytes), the engine's own refusal SUBMIT_REJECTED (nothing left), and an
    unclear or missing answer (`JitoUnavailable`) goes up as it is: the bytes may be out."""
    try:
        yield
    except JitoRateLimited as error:
        fail(ErrorCode.RATE_LIMITED, f"{engine} rate limited the {what}: {error}")
    except JitoUnavailable:
        raise
    except JitoError as error:
        fail(ErrorCode.SUBMIT_REJECTED, f"{engine} refused the {what}: {error}")


def _route_name(route: str) -> str:
    """A method's name as a route (`tpu_direct` goes out as `tpu`, `jito_bundle` to the one engine as `bundle`)."""
    return {"tpu_direct": "tpu", "jito_bundle": "bundle"}.get(route, route)


async def _copy_to(backup: SolanaRpc, raw: bytes) -> None:
    try:
        await backup.send_transaction(raw)
    except Exception as error:  # a backup's trouble never fails the plan
        log.debug("backup RPC %s refused a copy: %s", backup.shown, error)
