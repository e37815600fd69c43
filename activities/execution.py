"""The ExecutePlan activities, bound to the worker's shared resources.

Each is small and idempotent: `execute` claims the plan's dispatch (lease, transaction,
send: see executor/dispatch.py); `resolve_record` settles what a failed execute leaves behind;
`confirm` follows the recorded signature until the chain decides; `settle` reads what it
cost; `release_wallet` gives the lease back wherever it is; `publish` stores the plan's one
result and publishes it, deduplicated by plan id. Every log line carries plan id and stage.

This is where the executor's domain errors meet Temporal's, and the only place: every activity
body runs inside `plan_failures`, which turns an `executor.errors.PlanFailure` into the
ApplicationError the workflow reads (type = the plan's error code, non_retryable = not
retryable), as the Temporal Python samples translate domain errors at the activity's edge.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.events import ExecutionResultEvent
from workflows.plan_activities import PlanActivities
from workflows.stages import (
    Confirmation,
    ConfirmRequest,
    Executed,
    ExecuteRequest,
    PublishRequest,
    ReleaseRequest,
    ResolveRequest,
    SettleRequest,
    Settlement,
    SignedTransaction,
)

from executor.bundles import BundleFollow, BundleTracker
from executor.confirm import SignatureWatcher, follow
from executor.dispatch import Dispatcher
from executor.errors import PlanFailure
from executor.publish import publish_result
from executor.records import PlanRecords
from executor.settle import settle
from executor.wallets import WalletPool
from venue.rpc import SolanaRpc

log = logging.getLogger("hft.activities")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
WORKER_STOPPING = "WORKER_STOPPING"


def plan_failures(body: F) -> F:
    """The activity edge: a `PlanFailure` from the executor leaves as Temporal's ApplicationError,
    its type the plan's error code and non-retryable unless the failure is retryable. Raised
    without a cause (`from None`), so the workflow's failure is what `executor.errors.fail` used to
    raise; the traceback is the domain error's, so the failure still shows where it happened."""

    @functools.wraps(body)
    async def translated(*args, **kwargs):
        try:
            return await body(*args, **kwargs)
        except PlanFailure as failure:
            error = ApplicationError(failure.message, type=failure.code.value, non_retryable=not failure.retryable)
            raise error.with_traceback(failure.__traceback__) from None

    return translated  # type: ignore[return-value]


async def unless_worker_stops(work: Awaitable[T], plan_id: str, stage: str, grace_s: float) -> T:
    """Run ``work``; once this worker starts to shut down, give it ``grace_s`` more, then end the
    attempt with a retryable WORKER_STOPPING. The workflow's retry waits as a durable timer, so
    the plan's workflow task ends and the next attempt runs on a worker that stays. Without this,
    a confirm waiting out an outage would hold the shutdown for as long as the outage lasts."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(activity.wait_for_worker_shutdown())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace_s)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.warning("plan=%s stage=%s event=handed_over reason=worker_stopping grace_s=%.0f", plan_id, stage, grace_s)
        raise ApplicationError(f"{stage}: this worker is stopping; the next attempt runs on another worker", type=WORKER_STOPPING)
    finally:
        stopping.cancel()
        task.cancel()


class ExecutionActivities(PlanActivities):
    """The activities of `workflows.plan_activities.PlanActivities`, bound to the worker's shared resources."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        rpc: SolanaRpc,
        wallets: WalletPool,
        records: PlanRecords,
        watcher: SignatureWatcher,
        js,
        commitment: str = "confirmed",
        rebroadcast_s: float = 1.0,
        sol_price_usd: float = 150.0,
        on_result: Callable[[ExecutionResultEvent], None] | None = None,
        on_publish_failure: Callable[[], None] | None = None,
        confirmation_timeout_ms: int = 30_000,
        tpu_rebroadcast_s: float = 0.4,
        shutdown_grace_s: float = 10.0,
        bundles: BundleTracker | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.submitter = dispatcher.submitter
        self.rpc = rpc
        self.wallets = wallets
        self.records = records
        self.watcher = watcher
        self.js = js
        self.commitment = commitment
        self.rebroadcast_s = rebroadcast_s
        self.sol_price_usd = sol_price_usd
        self.on_result = on_result
        self.on_publish_failure = on_publish_failure or (lambda: None)
        self.confirmation_timeout_ms = confirmation_timeout_ms
        self.tpu_rebroadcast_s = tpu_rebroadcast_s
        self.shutdown_grace_s = shutdown_grace_s
        self.bundles = bundles  # follows bundles and resends what a region dropped (issue 23)

    def all(self) -> list:
        return [self.execute, self.resolve_record, self.confirm, self.settle, self.release_wallet, self.publish]

    @activity.defn(name="execute")
    @plan_failures
    async def execute(self, request: ExecuteRequest) -> Executed:
        """Claim the plan's dispatch (prepared and maybe sent ahead by the bridge, or done now): the
        lease, the recorded transaction and the send's outcome. A refusal that proves nothing left
        raises the plan's error code; a send whose fate is unknown returns normally, so the
        workflow goes on to find out on chain."""
        return await self.dispatcher.claim(request.plan, request.halt_reason)

    @activity.defn(name="resolve_record")
    @plan_failures
    async def resolve_record(self, request: ResolveRequest) -> SignedTransaction | None:
        """execute failed. None: the plan's record is void (written now if missing), so nothing of it
        was ever sent or ever will be. Otherwise the recorded transaction, which may be on the wire."""
        record = await self.records.void(request.plan_id, request.code, request.reason)
        log.info("plan=%s stage=record void=%s signature=%s", request.plan_id, record.void, record.signed.signature if record.signed else None)
        return record.signed

    @activity.defn(name="confirm")
    @plan_failures
    async def confirm(self, request: ConfirmRequest) -> Confirmation:
        self.dispatcher.crash_point("confirm")
        raw = base64.b64decode(request.signed.transaction)
        method = request.method
        # rpc: resend every REBROADCAST_MS; tpu_direct: every TPU_REBROADCAST_MS, so each new
        # leader window gets a copy; race: both. Bundles are not resent on a timer, which would
        # spend the regions' per-IP rate limit that new plans need: a bundle is resent to another
        # region when one says it dropped it (executor/bundles.py).
        every = {"rpc": self.rebroadcast_s, "tpu_direct": self.tpu_rebroadcast_s, "race": self.tpu_rebroadcast_s}.get(method)
        may_send = request.submission.withheld_code is None and request.halt_reason is None
        if not may_send:
            every = None  # this run may not send: only watch what is recorded
        until_ms = min(request.rebroadcast_until_ms, request.submission.sent_at_ms + self.confirmation_timeout_ms)

        def gate():
            return self.submitter.refusal(None, until_ms)

        rpc_sent = [time.monotonic()]

        async def rebroadcast() -> None:
            # the gate again in the slot's step: a halt between may_resend and here refuses the copy
            if method != "race":
                await self.submitter.send(method, raw, gate=gate)
                return
            copies = [self.submitter.send_route("tpu_direct", raw, gate=gate)] if self.submitter.tpu is not None else []
            if time.monotonic() - rpc_sent[0] >= self.rebroadcast_s:
                rpc_sent[0] = time.monotonic()
                copies.append(self.submitter.send_route("rpc", raw, gate=gate))
            for outcome in await asyncio.gather(*copies, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.debug("plan=%s stage=confirm event=rebroadcast_failed error=%s", request.plan_id, outcome)

        bundles = self._bundle_follow(request, raw, may_send, gate)

        following = follow(
            request.plan_id,
            request.signed.signature,
            request.signed.last_valid_block_height,
            self.watcher,
            commitment=self.commitment,
            rebroadcast=rebroadcast if every is not None else None,
            rebroadcast_s=every or self.rebroadcast_s,
            # a copy of bytes that may never have left is a new send: the kill switch and the deadline apply
            may_resend=lambda: self.submitter.refusal(None, until_ms) is None,
            heartbeat=(lambda details: None) if activity.info().is_local else activity.heartbeat,
            between_polls=bundles.check if bundles is not None else None,
        )
        try:
            outcome = await unless_worker_stops(following, request.plan_id, "confirm", self.shutdown_grace_s)
            if bundles is not None:
                landed_via = await bundles.landed_route() if outcome.landed else None
                outcome = replace(outcome, landed_via=landed_via, bundle_resends=bundles.resends)
        finally:
            if bundles is not None:
                bundles.close()
        log.info(
            "plan=%s stage=confirm landed=%s slot=%s code=%s rebroadcasts=%d landed_via=%s bundle_resends=%d",
            request.plan_id, outcome.landed, outcome.slot, outcome.error_code, outcome.rebroadcasts, outcome.landed_via, outcome.bundle_resends,
        )
        return outcome

    def _bundle_follow(self, request: ConfirmRequest, raw: bytes, may_send: bool, gate) -> BundleFollow | None:
        """The plan's bundles followed by region, and resent elsewhere when one is dropped: only while
        this run may send, the gate lets it (halt, deadline) and the blockhash is still valid."""
        bundles = dict(request.submission.bundles)
        if not bundles or self.bundles is None:
            return None
        last_valid = request.signed.last_valid_block_height

        def may_resend() -> bool:
            height = self.watcher.block_height
            return may_send and gate() is None and (height is None or height <= last_valid)

        async def send(region: str) -> str:
            sent = await self.submitter.send_route(f"bundle:{region}", raw, gate=gate)
            return sent.bundle_id

        return BundleFollow(request.plan_id, raw, bundles, self.bundles, send=send, may_resend=may_resend)

    @activity.defn(name="settle")
    @plan_failures
    async def settle(self, request: SettleRequest) -> Settlement:
        settlement = await settle(self.rpc, request, self.sol_price_usd)
        log.info("plan=%s stage=settle fee=%d tip=%d profit=%s", request.plan.plan_id, settlement.fee_lamports, settlement.tip_lamports, settlement.actual_profit_usd)
        return settlement

    @activity.defn(name="release_wallet")
    @plan_failures
    async def release_wallet(self, request: ReleaseRequest) -> None:
        await self.wallets.release(request.plan_id, request.wallet, request.outcome)
        log.info("plan=%s stage=release wallet=%s outcome=%s", request.plan_id, request.wallet, request.outcome)

    @activity.defn(name="publish")
    @plan_failures
    async def publish(self, request: PublishRequest) -> ExecutionResultEvent:
        """Store the plan's one result (an earlier run's stored result wins: one story) and publish it.
        Retried by the workflow for as long as NATS is away; each failed attempt is counted and logged."""
        result = request.result
        try:
            if request.keep:
                stored = await self.records.keep_result(result)
                if stored.status != result.status or stored.error_code != result.error_code:
                    log.warning(
                        "plan=%s stage=publish event=earlier_result_kept status=%s code=%s this_run=%s/%s",
                        result.plan_id, stored.status.value, stored.error_code.value if stored.error_code else None,
                        result.status.value, result.error_code.value if result.error_code else None,
                    )
                result = stored
            await publish_result(self.js, result, request.message_id)
            self.dispatcher.crash_point("publish")
        except BaseException as error:  # cut short by its attempt's timeout too (NATS away: the ack never came)
            self.on_publish_failure()
            attempt = activity.info().attempt
            log.warning("plan=%s stage=publish event=publish_failed attempt=%d error=%s: %s; retrying until it is out", result.plan_id, attempt, type(error).__name__, error)
            raise
        log.info("plan=%s stage=publish status=%s code=%s", result.plan_id, result.status.value, result.error_code.value if result.error_code else None)
        if self.on_result is not None:
            self.on_result(result)
        return result

