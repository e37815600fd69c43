"""ExecutePlan: one execution plan, from a wallet lease to exactly one result event.

Reads top to bottom as the trade: check the plan; execute it (lease, build, sign, record,
the send gate, the send: one local activity, which claims that work when the bridge did it
ahead of this first workflow task); if execute failed, let the plan's record say whether
anything can be on the wire; confirm until the chain decides; settle; release the lease;
publish the one result. Deterministic and free of I/O.

The promise it keeps: a result may be late, never wrong. "Not landed" comes only from the
chain (confirm) or from a void record (nothing was ever sent, and now nothing ever will
be), so confirm, the record and the publish retry for as long as the chain, NATS or the
RPC are away. A plan is never failed by a timeout of its own bookkeeping.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, FailureError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from workflows.converter import Unencrypted
    from workflows.events import (
        ErrorCode,
        ExecutionCost,
        ExecutionPlanEvent,
        ExecutionResultEvent,
        ExecutionStatus,
        InvalidPlan,
        StageTimings,
        parse_plan,
        rejection,
    )
    from workflows.plan_activities import PlanActivities
    from workflows.stages import (
        Confirmation,
        ConfirmRequest,
        Executed,
        ExecuteRequest,
        Following,
        PublishRequest,
        ReleaseRequest,
        ResolveRequest,
        SettleRequest,
        Settlement,
        SignedTransaction,
        Submission,
        WalletLeaseInfo,
    )
    from workflows.submitted import SubmittedPlan

PLAN_ID = SearchAttributeKey.for_keyword("PlanId")
OPPORTUNITY_ID = SearchAttributeKey.for_keyword("OpportunityId")
EXECUTION_METHOD = SearchAttributeKey.for_keyword("ExecutionMethod")
# "ExecutionStatus" is Temporal's own system attribute (Running, Completed, ...): the server
# refuses to let a workflow set it, so the plan's result status is PlanStatus.
PLAN_STATUS = SearchAttributeKey.for_keyword("PlanStatus")
WALLET = SearchAttributeKey.for_keyword("Wallet")
SEARCH_ATTRIBUTES = {"PlanId": "Keyword", "OpportunityId": "Keyword", "ExecutionMethod": "Keyword", "PlanStatus": "Keyword", "Wallet": "Keyword"}

# Transient failures (an RPC hiccup, a busy wallet) retry quickly; execute stops itself at the deadline.
HOT_PATH_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=20), backoff_coefficient=2.0, maximum_interval=timedelta(milliseconds=500))
# execute may run past the deadline only to finish a send already under way (each send has its own
# timeouts, a few seconds at most): it is never cut mid-send in practice, and if it is, the record decides.
EXECUTE_GRACE = timedelta(seconds=20)
# What must happen before the result can be told (the record, the publish) retries for as
# long as anything is down; the interval caps how late after a recovery the result comes.
UNTIL_DONE = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=30))
CONFIRM_ATTEMPT = timedelta(minutes=5)  # longer than any blockhash lives; confirm ends an attempt itself when the chain is silent
# confirm waits for the chain however long it takes. The workflow retries it itself (one attempt
# per call), so between attempts it can see its history: Temporal ends a workflow at 51,200
# events and a running confirm adds about 150 a minute (it heartbeats the workflow task every
# 1.2 s), so past FOLLOW_ON_AFTER_EVENTS the plan continues as new, following the same transaction.
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
CONFIRM_WAIT_FIRST = timedelta(seconds=1)
CONFIRM_WAIT_MAX = timedelta(seconds=30)
FOLLOW_ON_AFTER_EVENTS = 10_000
BOOKKEEPING_ATTEMPT = timedelta(seconds=10)
# Accounting that may be given up: the plan's result stands without it (a lease expires on its own).
# Bounded by attempts (about 20 s of trying): measured with SDK 1.35, a local activity's
# schedule-to-close does not stop its retries.
BOOKKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=5), maximum_attempts=10
)
BOOKKEEPING_TIME = timedelta(seconds=30)
# After execute, a retry that waits longer than this waits as a durable timer, not inside the
# worker: the workflow task ends between attempts, so a worker that is shutting down hands the
# plan over. The SDK core keeps retrying local activities during a shutdown and the shutdown
# waits for them: with an outage, that was a worker that never stopped.
RETRY_AS_TIMER = timedelta(milliseconds=500)
MAX_HALT_REASON = 200


def plan_workflow_id(plan_id: str) -> str:
    """The one workflow id a plan runs under: REJECT_DUPLICATE on it makes a plan id run once."""
    return f"plan-{plan_id}"


def search_attributes(plan: ExecutionPlanEvent) -> TypedSearchAttributes:
    """Set at start by the bridge, so the Temporal UI can list and filter executions."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(PLAN_ID, plan.plan_id),
            SearchAttributePair(OPPORTUNITY_ID, plan.opportunity_id),
            SearchAttributePair(EXECUTION_METHOD, plan.execution_method.value),
        ]
    )


class PlanStopped(Exception):
    """Ends the plan early with a status and code (internal to the workflow)."""

    def __init__(self, status: ExecutionStatus, code: ErrorCode, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@workflow.defn(name="ExecutePlan")
class ExecutePlan:
    def __init__(self) -> None:
        self.stage = "received"
        self.halt_reason: str | None = None
        self.lease: WalletLeaseInfo | None = None
        self.signed: SignedTransaction | None = None
        self.submission: Submission | None = None

    @workflow.signal
    def halt(self, *reason: object) -> None:
        """Stop before the send; a plan already sent is still followed to its true outcome. Any
        input halts (an operator's halt is never dropped for its form): the reason is its text."""
        given = reason[0] if reason else None
        if isinstance(given, Unencrypted):  # a halt from a client without the keys still halts: stopping is never refused
            given = given.value
        text = given if isinstance(given, str) else json.dumps(given) if given is not None else ""
        self.halt_reason = text.strip()[:MAX_HALT_REASON] or "halted"
        workflow.logger.info("plan=%s stage=%s event=halt_signal reason=%s", workflow.info().workflow_id, self.stage, self.halt_reason)

    @workflow.query
    def status(self) -> dict:
        return {
            "stage": self.stage,
            "halted": self.halt_reason,
            "wallet": self.lease.wallet if self.lease else None,
            "signature": self.signed.signature if self.signed else None,
            "bundleId": self.submission.bundle_id if self.submission else None,
        }

    @workflow.run
    async def run(self, *submitted: object) -> ExecutionResultEvent:
        """`submitted`: whatever the workflow was started with, any number of values (why not a typed
        parameter: workflows/submitted.py), read once into a `SubmittedPlan`; a plan is checked here as
        the bridge checks it, since a client can start this workflow without the bridge.

        A cancel request (the UI, `temporal workflow cancel`) is obeyed as a halt, never by dropping
        the plan: a cancelled workflow would end without a result, while its transaction may be out.
        The plan goes on under the halt: nothing unsent goes out, what is out is followed to its
        true outcome, and the one result is published (issue 20)."""
        plan_run = asyncio.ensure_future(self._run(SubmittedPlan.read(submitted, continued=workflow.info().continued_run_id is not None)))
        while True:
            try:
                return await asyncio.shield(plan_run)
            except asyncio.CancelledError:
                if plan_run.done():
                    raise
                self.halt_reason = self.halt_reason or "cancelled through Temporal"
                workflow.logger.info("plan=%s stage=%s event=cancel_requested treated_as=halt", workflow.info().workflow_id, self.stage)

    async def _run(self, submitted: SubmittedPlan) -> ExecutionResultEvent:
        # One bare turn of the event loop (no timer, no command: replay-safe) before anything is read:
        # a cancel that came with the start is delivered to `run` one turn after it starts this task,
        # and must be a halt before `execute` reads the halt reason.
        await asyncio.sleep(0)
        started_ms = _now_ms()
        if submitted.plain:
            # Written by a client without the history keys while encryption is on (workflows/codec.py):
            # whoever reaches Temporal is not thereby a planner. Told under this execution's id; nothing sent.
            return await self._reject(b"", InvalidPlan(
                ErrorCode.INVALID_PLAN, "refused: started in plain text by a client without the history keys, while history encryption is on",
            ))  # fmt: skip
        data, following = submitted.data, submitted.following
        try:
            plan = parse_plan(data, now_ms=started_ms)
        except InvalidPlan as invalid:
            return await self._reject(data, invalid)
        if workflow.info().workflow_id != plan_workflow_id(plan.plan_id):
            # A plan runs only as plan-<planId>: that id is its once-ever fence in Temporal (REJECT_DUPLICATE);
            # under another id a client could run a plan id twice. Told under this execution's id, not the
            # plan's: the plan itself may still run, and be told, under its own.
            invalid = InvalidPlan(ErrorCode.INVALID_PLAN, f"invalid plan: started as {workflow.info().workflow_id[:200]!r}; plan {plan.plan_id} runs only as {plan_workflow_id(plan.plan_id)}")
            return await self._reject(b"", invalid)

        executed: Executed | None = None
        confirmation: Confirmation | None = None
        settlement: Settlement | None = None
        stopped: PlanStopped | None = None
        if following is not None:  # a long confirm continued as new: follow the same transaction
            started_ms, executed, stopped = self._follow_on(following)
        else:
            try:
                self.stage = "execute"
                executed = await self._execute(plan)
                self.lease, self.signed, self.submission = executed.lease, executed.signed, executed.submission
            except FailureError as error:
                stopped = _stopped_by(error, self.stage)
                await self._resolve_record(plan, stopped)
        if self.signed is not None:
            confirmation = await self._confirm(plan, Following(
                started_ms, self.signed, self.submission, self.lease, executed,
                stopped.code.value if stopped else None, stopped.message if stopped else None, self.halt_reason,
            ), submitted)  # fmt: skip
            if confirmation.landed:
                stopped = None  # whatever this run went through, the chain says the trade happened
                settlement = await self._settle(plan)
            elif self.submission.withheld_code is not None:
                code = ErrorCode(self.submission.withheld_code)
                stopped = PlanStopped(_status_for(code), code, self.submission.withheld or code.value)
        await self._release(plan, confirmation)
        result = self._result(plan, started_ms, executed, confirmation, settlement, stopped)
        return await self._publish(result, message_id=plan.plan_id, keep=True)

    async def _execute(self, plan: ExecutionPlanEvent) -> Executed:
        # lease -> build -> sign -> record -> send as one local activity: each local activity costs a
        # round trip through the SDK core (measured 2-5 ms each). The deadline is judged inside, by
        # the clock of the process that sends (the bridge may have sent already, on that clock).
        remaining = timedelta(milliseconds=max(0, plan.deadline - _now_ms()))
        return await workflow.execute_local_activity_method(
            PlanActivities.execute,
            ExecuteRequest(plan, self.halt_reason),
            schedule_to_close_timeout=remaining + EXECUTE_GRACE,
            retry_policy=HOT_PATH_RETRY,
        )

    async def _resolve_record(self, plan: ExecutionPlanEvent, stopped: PlanStopped) -> None:
        """execute failed: either the record is void now (nothing sent, ever) or the recorded
        transaction may be out, and it is followed with the failure as its code if it never lands."""
        self.stage = "record"
        signed = await workflow.execute_local_activity_method(
            PlanActivities.resolve_record,
            ResolveRequest(plan.plan_id, stopped.code.value, stopped.message),
            start_to_close_timeout=BOOKKEEPING_ATTEMPT,
            retry_policy=UNTIL_DONE,
            local_retry_threshold=RETRY_AS_TIMER,
        )
        if signed is not None:
            self.signed = signed
            withheld = f"{stopped.message}; its recorded transaction was followed and did not land"
            self.submission = Submission(signed.signature, None, _now_ms(), withheld_code=stopped.code.value, withheld=withheld)

    async def _confirm(self, plan: ExecutionPlanEvent, following: Following, submitted: SubmittedPlan) -> Confirmation:
        """Until the chain decides, however long that takes: a silent chain is asked again after a
        durable timer (1 s doubling to 30 s), and a history grown long continues as new."""
        # A local activity too (measured: Temporal server CPU per plan 24.5 -> 13.6 ms, history
        # 16 -> 11 events). While it waits, the SDK heartbeats the workflow task; if this worker
        # dies, the task times out and another worker re-runs confirm.
        self.stage = "confirm"
        wait = CONFIRM_WAIT_FIRST
        while True:
            try:
                return await workflow.execute_local_activity_method(
                    PlanActivities.confirm,
                    ConfirmRequest(plan.plan_id, plan.execution_method.value, self.signed, self.submission, plan.deadline, self.halt_reason),
                    start_to_close_timeout=CONFIRM_ATTEMPT,
                    retry_policy=ONE_ATTEMPT,
                    summary=f"confirm {self.signed.signature[:12]}",
                )
            except FailureError as error:
                workflow.logger.warning("plan=%s stage=confirm event=retry in_s=%.0f error=%s", plan.plan_id, wait.total_seconds(), _cause(error))
            events = workflow.info().get_current_history_length()
            if events > FOLLOW_ON_AFTER_EVENTS:
                workflow.logger.info("plan=%s stage=confirm event=continue_as_new events=%d", plan.plan_id, events)
                workflow.continue_as_new(args=submitted.follow_on(dataclasses.replace(following, halt_reason=self.halt_reason)))
            await workflow.sleep(wait)
            wait = min(wait * 2, CONFIRM_WAIT_MAX)

    def _follow_on(self, following: Following) -> tuple[int, Executed | None, PlanStopped | None]:
        """A run continued by `_confirm`: take over what the previous run was following."""
        self.lease, self.signed, self.submission = following.lease, following.signed, following.submission
        self.halt_reason = self.halt_reason or following.halt_reason  # a halt may have reached this run already
        stopped = None
        if following.stopped_code is not None:
            code = ErrorCode(following.stopped_code)
            stopped = PlanStopped(_status_for(code), code, following.stopped_message or code.value)
        return following.started_ms, following.executed, stopped

    async def _settle(self, plan: ExecutionPlanEvent) -> Settlement | None:
        self.stage = "settle"
        try:
            return await workflow.execute_local_activity_method(
                PlanActivities.settle,
                SettleRequest(plan, self.signed.wallet, self.signed.signature, self.signed.tip_lamports),
                schedule_to_close_timeout=BOOKKEEPING_TIME,
                retry_policy=BOOKKEEPING_RETRY,
                local_retry_threshold=RETRY_AS_TIMER,
            )
        except FailureError as error:
            # The trade's outcome stands; only its accounting (fees, actual profit) is missing.
            workflow.logger.warning("plan=%s stage=settle unavailable: %s", plan.plan_id, _cause(error))
            return None

    async def _release(self, plan: ExecutionPlanEvent, confirmation: Confirmation | None) -> None:
        """The plan's lease, wherever it is (execute may have been cut short before it said)."""
        self.stage = "release"
        if confirmation is None or (not confirmation.landed and self.submission.withheld_code is not None):
            outcome = "none"  # this wallet sent nothing that failed
        else:
            outcome = "success" if confirmation.landed and confirmation.err is None else "failure"
        wallet = self.signed.wallet if self.signed else (self.lease.wallet if self.lease else None)
        try:
            await workflow.execute_local_activity_method(
                PlanActivities.release_wallet,
                ReleaseRequest(plan.plan_id, wallet, outcome),
                schedule_to_close_timeout=BOOKKEEPING_TIME,
                retry_policy=BOOKKEEPING_RETRY,
                local_retry_threshold=RETRY_AS_TIMER,
            )
        except FailureError as error:
            workflow.logger.warning("plan=%s stage=release unavailable, the lease expires on its own: %s", plan.plan_id, _cause(error))

    async def _publish(self, result: ExecutionResultEvent, *, message_id: str, keep: bool) -> ExecutionResultEvent:
        """Until it is out, however long NATS is away. The stored result is the plan's story: a re-run
        that saw something else publishes and returns the first one."""
        self.stage = "publish"
        told = await workflow.execute_local_activity_method(
            PlanActivities.publish,
            PublishRequest(result, message_id, keep),
            start_to_close_timeout=BOOKKEEPING_ATTEMPT,
            retry_policy=UNTIL_DONE,
            local_retry_threshold=RETRY_AS_TIMER,
        )
        workflow.upsert_search_attributes([PLAN_STATUS.value_set(told.status.value)] + ([WALLET.value_set(told.wallet)] if told.wallet else []))
        self.stage = "done"
        return told

    async def _reject(self, data: bytes, invalid: InvalidPlan) -> ExecutionResultEvent:
        """Not a plan: a failed result keyed by this execution, never stored as a plan's result (a
        valid plan with the same id must still be able to run and be told)."""
        info = workflow.info()
        fallback = info.workflow_id.removeprefix("plan-")  # not a plan id (any text a client chose): rejection() digests it
        result = rejection(data, invalid, fallback_plan_id=fallback, fallback_opportunity="unknown", execution_id=info.workflow_id, now_ms=_now_ms())
        workflow.logger.warning("plan=%s stage=validate event=rejected code=%s error=%s", result.plan_id, invalid.code.value, str(invalid)[:300])
        return await self._publish(result, message_id=f"rejected-{info.workflow_id}-{info.run_id}", keep=False)

    def _result(
        self,
        plan: ExecutionPlanEvent,
        started_ms: int,
        executed: Executed | None,
        confirmation: Confirmation | None,
        settlement: Settlement | None,
        stopped: PlanStopped | None,
    ) -> ExecutionResultEvent:
        if stopped is not None:
            status, code, error = stopped.status, stopped.code, stopped.message
        elif confirmation is not None and confirmation.landed and confirmation.err is None:
            status, code, error = ExecutionStatus.success, None, None
        elif confirmation is not None and confirmation.landed:
            status, code, error = ExecutionStatus.failed, ErrorCode.TX_FAILED, f"transaction failed on-chain: {confirmation.err}"
        else:
            code = ErrorCode.BLOCKHASH_EXPIRED
            status = ExecutionStatus.timeout
            height = self.signed.last_valid_block_height if self.signed else "?"
            error = f"not landed before block height {height}; it can never land now"
        cost = ExecutionCost()
        if settlement is not None:
            total = settlement.fee_lamports + settlement.tip_lamports
            cost = ExecutionCost(fee_lamports=settlement.fee_lamports, tip_lamports=settlement.tip_lamports, total_lamports=total, usd=settlement.cost_usd)
        actual = settlement.actual_profit_usd if settlement is not None else None
        timings = StageTimings()
        if executed is not None:
            timings = StageTimings(
                lease=executed.lease.elapsed_ms,
                build=executed.build_ms,
                sign=executed.signed.elapsed_ms,
                submit=executed.submission.elapsed_ms,
                confirm=confirmation.elapsed_ms if confirmation else None,
            )
        sent = self.signed is not None and self.submission is not None
        now = _now_ms()
        return ExecutionResultEvent(
            execution_id=workflow.info().workflow_id,
            plan_id=plan.plan_id,
            opportunity_id=plan.opportunity_id,
            status=status,
            signature=self.signed.signature if sent else None,
            block_slot=confirmation.slot if confirmation else None,
            confirmation_time=confirmation.confirmed_at_ms if confirmation else None,
            expected_profit=plan.expected_profit,
            actual_profit=actual,
            execution_cost=cost,
            net_profit=(actual - cost.usd) if actual is not None else None,
            latency=float(now - started_ms),
            execution_method=plan.execution_method.value,
            error=error,
            error_code=code,
            timestamp=now,
            # the fee payer: a re-run may lease another wallet but always sends the recorded transaction
            wallet=self.signed.wallet if self.signed else (self.lease.wallet if self.lease else None),
            bundle_id=self.submission.bundle_id if self.submission else None,
            tip_lamports=self.signed.tip_lamports if sent else None,
            stage_timings=timings,
            **_landing(self.submission if sent else None, confirmation),
        )


def _landing(submission: Submission | None, confirmation: Confirmation | None) -> dict:
    """The result's landing analytics: send slot, slots to land, the route that landed it and the routes tried."""
    if submission is None:
        return {}
    landed_slot = confirmation.slot if confirmation is not None and confirmation.landed else None
    return {
        "send_slot": submission.sent_slot,
        "slots_to_land": max(0, landed_slot - submission.sent_slot) if landed_slot is not None and submission.sent_slot is not None else None,
        "landed_via": confirmation.landed_via if confirmation is not None else None,
        "routes": list(submission.routes) or None,
    }


def _now_ms() -> int:
    return int(workflow.now().timestamp() * 1000)


TIMEOUT_CODES = (ErrorCode.DEADLINE_EXCEEDED, ErrorCode.BLOCKHASH_EXPIRED, ErrorCode.CONFIRMATION_TIMEOUT)


def _status_for(code: ErrorCode) -> ExecutionStatus:
    return ExecutionStatus.timeout if code in TIMEOUT_CODES else ExecutionStatus.failed


def _cause(error: FailureError) -> BaseException | None:
    """What an activity raised. A failed local activity can arrive as its ApplicationError itself
    (measured here with SDK 1.35), a failed activity as an ActivityError wrapping it."""
    return error.cause if isinstance(error, ActivityError) else error


def _stopped_by(error: FailureError, stage: str) -> PlanStopped:
    """An activity's ApplicationError type is the plan's error code. Whatever else stopped execute
    (its time ran out, an unexpected error) is judged by the record next, never taken as proof."""
    cause = _cause(error)
    if isinstance(cause, ApplicationError) and cause.type in ErrorCode.__members__:
        code = ErrorCode(cause.type)
        return PlanStopped(_status_for(code), code, cause.message)
    message = str(cause) if cause is not None else str(error)
    if isinstance(cause, ActivityTimeoutError):
        return PlanStopped(ExecutionStatus.timeout, ErrorCode.DEADLINE_EXCEEDED, f"{stage} did not finish before the plan's deadline")
    return PlanStopped(ExecutionStatus.failed, ErrorCode.BUILD_FAILED, f"{stage} failed: {message}")
