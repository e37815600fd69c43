"""ExecutePlan: one execution plan, from a wallet lease to exactly one result event.

Reads top to bottom as the trade: lease a wallet, build, sign and send (one local activity,
which checks the halt flag and the deadline just before the send, and which claims that
work when the bridge did it ahead of this first workflow task); confirm; settle; release the
lease; publish. Every step is a local activity, so a plan costs two workflow
tasks and about 11 history events. Deterministic and free of I/O.
"""
from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, FailureError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from workflows.events import (
        ErrorCode,
        ExecutionCost,
        ExecutionPlanEvent,
        ExecutionResultEvent,
        ExecutionStatus,
        StageTimings,
    )
    from workflows.stages import (
        Confirmation,
        ConfirmRequest,
        Executed,
        ExecuteRequest,
        ReleaseRequest,
        SettleRequest,
        Settlement,
        SignedTransaction,
        Submission,
        WalletLeaseInfo,
    )

PLAN_ID = SearchAttributeKey.for_keyword("PlanId")
OPPORTUNITY_ID = SearchAttributeKey.for_keyword("OpportunityId")
EXECUTION_METHOD = SearchAttributeKey.for_keyword("ExecutionMethod")
# "ExecutionStatus" is Temporal's own system attribute (Running, Completed, ...): the server
# refuses to let a workflow set it, so the plan's result status is PlanStatus.
PLAN_STATUS = SearchAttributeKey.for_keyword("PlanStatus")
WALLET = SearchAttributeKey.for_keyword("Wallet")
SEARCH_ATTRIBUTES = {"PlanId": "Keyword", "OpportunityId": "Keyword", "ExecutionMethod": "Keyword", "PlanStatus": "Keyword", "Wallet": "Keyword"}

# Transient failures (an RPC hiccup) retry quickly; codes raised non-retryable fail at once.
HOT_PATH_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=20), backoff_coefficient=2.0, maximum_interval=timedelta(milliseconds=500))
BOOKKEEPING_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=5))
MIN_STAGE_TIME = timedelta(milliseconds=200)
BOOKKEEPING_TIME = timedelta(minutes=5)
SETTLE_TIME = timedelta(seconds=30)
LEASE_MARGIN_MS = 60_000


def lease_ttl_for(plan: ExecutionPlanEvent) -> int:
    """A plan holds its wallet for its whole life plus a margin; an orphaned lease expires after it."""
    return plan.max_latency + LEASE_MARGIN_MS


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
    def halt(self, reason: str) -> None:
        """Stop before submit; a plan already submitted is still followed to its true outcome."""
        self.halt_reason = reason or "halted"

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
    async def run(self, plan: ExecutionPlanEvent) -> ExecutionResultEvent:
        started_ms = _now_ms()
        timings = StageTimings()
        confirmation: Confirmation | None = None
        settlement: Settlement | None = None
        stopped: PlanStopped | None = None
        try:
            # lease -> build -> sign -> send as one local activity: each local activity costs a
            # round trip through the SDK core (measured 2-5 ms each). The signed transaction is
            # recorded outside Temporal before the send; a re-run resends those bytes. The
            # deadline is judged there too, by the clock of the process that sends (the bridge
            # may have sent already, on that clock).
            self.stage = "execute"
            executed = await self._hot("execute", ExecuteRequest(plan, lease_ttl_for(plan), self.halt_reason), Executed, plan)
            self.lease, self.signed, self.submission = executed.lease, executed.signed, executed.submission
            self.stage = "confirm"
            # A local activity too (measured: Temporal server CPU per plan 24.5 -> 13.6 ms, history
            # 16 -> 11 events). While it waits, the SDK heartbeats the workflow task; if this
            # worker dies, the task times out (3 s) and another worker re-runs confirm.
            confirmation = await workflow.execute_local_activity(
                "confirm",
                ConfirmRequest(plan.plan_id, plan.execution_method.value, self.signed, self.submission, started_ms + plan.max_latency),
                result_type=Confirmation,
                schedule_to_close_timeout=timedelta(milliseconds=plan.max_latency) + timedelta(seconds=30),
                retry_policy=BOOKKEEPING_RETRY,
                summary=f"confirm {self.signed.signature[:12]}",
            )
            if not confirmation.landed and self.submission.withheld_code is not None:
                # Halted (or past its deadline) on a re-run, and the earlier run's transaction never landed.
                code = ErrorCode(self.submission.withheld_code)
                raise PlanStopped(_status_for(code), code, self.submission.withheld or code.value)
            if confirmation.landed:
                self.stage = "settle"
                try:
                    settlement = await workflow.execute_local_activity(
                        "settle",
                        SettleRequest(plan, self.signed.wallet, self.signed.signature, self.signed.tip_lamports),
                        result_type=Settlement,
                        schedule_to_close_timeout=SETTLE_TIME,
                        retry_policy=BOOKKEEPING_RETRY,
                    )
                except FailureError as error:
                    # The trade's outcome stands; only its accounting (fees, actual profit) is missing.
                    workflow.logger.warning("plan=%s stage=settle unavailable: %s", plan.plan_id, _cause(error))
            timings = StageTimings(
                select_wallet=self.lease.elapsed_ms,
                build=executed.build_ms,
                sign=self.signed.elapsed_ms,
                submit=self.submission.elapsed_ms,
                confirm=confirmation.elapsed_ms,
            )
        except PlanStopped as stop:
            stopped = stop
        except FailureError as error:
            stopped = _stopped_by(error, self.stage)
        finally:
            if self.lease is not None:
                await self._release(confirmation)
        result = self._result(plan, started_ms, confirmation, settlement, stopped, timings)
        self.stage = "publish"
        await workflow.execute_local_activity(
            "publish", result, schedule_to_close_timeout=BOOKKEEPING_TIME, retry_policy=BOOKKEEPING_RETRY
        )
        workflow.upsert_search_attributes(
            [PLAN_STATUS.value_set(result.status.value)] + ([WALLET.value_set(result.wallet)] if result.wallet else [])
        )
        self.stage = "done"
        return result

    async def _hot(self, name: str, request: object, result_type: type, plan: ExecutionPlanEvent):
        """A hot-path local activity, retried on transient errors but never past the plan's deadline."""
        remaining = timedelta(milliseconds=plan.deadline - _now_ms())
        return await workflow.execute_local_activity(
            name,
            request,
            result_type=result_type,
            schedule_to_close_timeout=max(remaining, MIN_STAGE_TIME),
            retry_policy=HOT_PATH_RETRY,
        )

    async def _release(self, confirmation: Confirmation | None) -> None:
        if confirmation is None or (not confirmation.landed and self.submission.withheld_code is not None):
            outcome = "none"  # this wallet sent nothing that failed
        else:
            outcome = "success" if confirmation.landed and confirmation.err is None else "failure"
        await workflow.execute_local_activity(
            "release_wallet",
            ReleaseRequest(self.lease.lease_id, self.lease.wallet, outcome),
            schedule_to_close_timeout=BOOKKEEPING_TIME,
            retry_policy=BOOKKEEPING_RETRY,
        )

    def _result(
        self,
        plan: ExecutionPlanEvent,
        started_ms: int,
        confirmation: Confirmation | None,
        settlement: Settlement | None,
        stopped: PlanStopped | None,
        timings: StageTimings,
    ) -> ExecutionResultEvent:
        if stopped is not None:
            status, code, error = stopped.status, stopped.code, stopped.message
        elif confirmation is not None and confirmation.landed and confirmation.err is None:
            status, code, error = ExecutionStatus.success, None, None
        elif confirmation is not None and confirmation.landed:
            status, code, error = ExecutionStatus.failed, ErrorCode.TX_FAILED, f"transaction failed on-chain: {confirmation.err}"
        else:
            code = ErrorCode(confirmation.error_code) if confirmation and confirmation.error_code else ErrorCode.CONFIRMATION_TIMEOUT
            status, error = ExecutionStatus.timeout, _timeout_text(code, self.signed)
        cost = ExecutionCost()
        if settlement is not None:
            total = settlement.fee_lamports + settlement.tip_lamports
            cost = ExecutionCost(fee_lamports=settlement.fee_lamports, tip_lamports=settlement.tip_lamports, total_lamports=total, usd=settlement.cost_usd)
        actual = settlement.actual_profit_usd if settlement is not None else None
        now = _now_ms()
        return ExecutionResultEvent(
            execution_id=workflow.info().workflow_id,
            plan_id=plan.plan_id,
            opportunity_id=plan.opportunity_id,
            status=status,
            signature=self.signed.signature if self.signed and self.submission else None,
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
            tip_lamports=self.signed.tip_lamports if self.signed and self.submission else None,
            stage_timings=timings,
        )


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
    """An activity's ApplicationError type is the plan's error code; a timeout depends on the stage."""
    cause = _cause(error)
    if isinstance(cause, ApplicationError) and cause.type in ErrorCode.__members__:
        code = ErrorCode(cause.type)
        return PlanStopped(_status_for(code), code, cause.message)
    message = str(cause) if cause is not None else str(error)
    if isinstance(cause, ActivityTimeoutError):
        if stage == "confirm":
            return PlanStopped(ExecutionStatus.timeout, ErrorCode.CONFIRMATION_TIMEOUT, f"confirmation did not finish: {message}")
        return PlanStopped(ExecutionStatus.timeout, ErrorCode.DEADLINE_EXCEEDED, f"{stage} did not finish before the plan's deadline")
    return PlanStopped(ExecutionStatus.failed, ErrorCode.BUILD_FAILED, f"{stage} failed: {message}")


def _timeout_text(code: ErrorCode, signed: SignedTransaction | None) -> str:
    if code is ErrorCode.BLOCKHASH_EXPIRED:
        return f"not landed before block height {signed.last_valid_block_height if signed else '?'}; it can never land now"
    return "not confirmed within the plan's maxLatency"
