"""The bridge: plans from PLANNED become ExecutePlan workflows, exactly once per plan id.

It runs inside the worker process so that a workflow start can be eager (the server hands
the first workflow task straight back to this process: no poll round trip). Beside the
start it prepares the plan's transaction, and once an eager start is answered it sends it
(`ExecutionActivities.send_ahead`): the workflow's `execute` claims both. A message is
acked only once the start is accepted; an id already started counts as accepted, which
is what makes a redelivered or re-published plan harmless. A plan that does not parse
gets its failed result here and its message is terminated, never redelivered. While the
kill switch is on the bridge takes nothing: plans wait in the stream.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from typing import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from workflows.events import PLAN_ID_PATTERN, ErrorCode, ExecutionCost, ExecutionPlanEvent, ExecutionResultEvent, ExecutionStatus
from workflows.execute_plan import search_attributes

from .streams import PLANNED_SUBJECTS

log = logging.getLogger("hft.bridge")
DURABLE = "executor-bridge"
START_RETRY_S = 1.0
# How long a workflow task may go silent before the server hands it to another worker: a
# dead worker delays its plans by this much. Local activities heartbeat the task at 80% of it.
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=3)
# A plan is prepared ahead (leased, built, signed, recorded) only while fewer starts than this
# are in flight. In a burst the rest prepare inside their own `execute`: a transaction recorded
# ahead is the plan's for good, so it must not wait in a queue while its blockhash ages, and
# leases taken ahead for queued plans would starve the plans actually executing.
PREPARE_AHEAD_MAX_STARTING = 4
# temporalio (1.x) marks a handle whose start response carried the first workflow task, which
# the SDK hands to this process's worker. Absent (another SDK version), nothing is sent ahead.
EAGERLY_STARTED = "__temporal_eagerly_started"


def workflow_id(plan_id: str) -> str:
    return f"plan-{plan_id}"


class InvalidPlan(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


def parse_plan(data: bytes) -> ExecutionPlanEvent:
    """Validate at the edge; the error text names the fields, so a planner can fix its output."""
    try:
        plan = ExecutionPlanEvent.model_validate_json(data)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}" for e in error.errors()[:5]]
        more = f" (+{error.error_count() - 5} more)" if error.error_count() > 5 else ""
        raise InvalidPlan(ErrorCode.INVALID_PLAN, "invalid plan: " + "; ".join(problems) + more) from None
    if not plan.simulation_success:
        raise InvalidPlan(ErrorCode.PLAN_NOT_SIMULATED, "simulationSuccess is false: the planner did not validate this plan")
    return plan


def rejection(data: bytes, subject: str, stream_seq: int, error: InvalidPlan) -> ExecutionResultEvent:
    """The failed result of a plan that never started, keyed by its plan id when it has a usable one."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raw = None
    raw = raw if isinstance(raw, dict) else {}

    def identifier(name: str, fallback: str) -> str:
        value = raw.get(name)
        return value if isinstance(value, str) and PLAN_ID_PATTERN.match(value) else fallback

    plan_id = identifier("planId", f"invalid-PLANNED-{stream_seq}")
    profit = raw.get("expectedProfit")
    method = raw.get("executionMethod")
    now = int(time.time() * 1000)
    return ExecutionResultEvent(
        execution_id=workflow_id(plan_id),
        plan_id=plan_id,
        opportunity_id=identifier("opportunityId", subject.rsplit(".", 1)[-1] or "unknown"),
        status=ExecutionStatus.failed,
        expected_profit=float(profit) if isinstance(profit, (int, float)) and not isinstance(profit, bool) else 0.0,
        execution_cost=ExecutionCost(),
        latency=0.0,
        execution_method=method if isinstance(method, str) and len(method) <= 32 else "unknown",
        error=str(error)[:1000],
        error_code=error.code,
        timestamp=now,
    )


class PlanBridge:
    def __init__(
        self,
        js: JetStreamContext,
        client: Client,
        task_queue: str,
        publish_result: Callable[[ExecutionResultEvent], Awaitable[None]],
        halted: Callable[[], str | None],
        *,
        max_in_flight: int = 256,
        ack_wait_s: float = 30.0,
        prepare: Callable[[ExecutionPlanEvent], None] | None = None,
        send: Callable[[ExecutionPlanEvent], None] | None = None,
        forget: Callable[[str], None] | None = None,
    ) -> None:
        self.js = js
        self.client = client
        self.task_queue = task_queue
        self.publish_result = publish_result
        self.halted = halted
        self.max_in_flight = max_in_flight
        self.ack_wait_s = ack_wait_s
        self.prepare = prepare or (lambda plan: None)
        self.send = send or (lambda plan: None)
        self.forget = forget or (lambda plan_id: None)
        self.started = 0
        self.sent_ahead = 0  # starts whose send followed at once, in this process (eager)
        self.rejected = 0
        self._starting = 0
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    async def run(self) -> None:
        subscription = await self.js.pull_subscribe(
            PLANNED_SUBJECTS,
            durable=DURABLE,
            stream="PLANNED",
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=self.max_in_flight,  # backpressure: at most this many plans between stream and workflow
                ack_wait=self.ack_wait_s,
            ),
        )
        log.info("stage=bridge event=started durable=%s maxInFlight=%d", DURABLE, self.max_in_flight)
        while not self._stopping:
            if self.halted() is not None:
                await asyncio.sleep(0.05)
                continue
            try:
                # batch=1 returns on the first message; a larger batch lingers for the rest.
                messages = await subscription.fetch(1, timeout=1.0)
            except asyncio.TimeoutError:
                continue
            except Exception as error:  # NATS reconnecting: keep going
                log.warning("stage=bridge event=fetch_failed error=%s", error)
                await asyncio.sleep(0.2)
                continue
            for message in messages:
                task = asyncio.create_task(self.take(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._stopping = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def take(self, message: Msg) -> None:
        try:
            plan = parse_plan(message.data)
        except InvalidPlan as invalid:
            await self.reject(message, invalid)
            return
        if self.halted() is not None:
            await message.nak(delay=1.0)  # halted while this one was in hand: it waits in the stream
            return
        # The lease, build, signature and record overlap the start's round trip; the send waits for it.
        if self._starting < PREPARE_AHEAD_MAX_STARTING:
            self.prepare(plan)
        self._starting += 1
        try:
            handle = await self.client.start_workflow(
                "ExecutePlan",
                plan,
                id=workflow_id(plan.plan_id),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,  # a plan id runs once, ever
                request_eager_start=True,
                task_timeout=WORKFLOW_TASK_TIMEOUT,
                search_attributes=search_attributes(plan),
                static_summary=f"{plan.execution_method.value} {plan.strategy.value} {plan.opportunity_id}",
            )
            eager = getattr(handle, EAGERLY_STARTED, False)
            if eager:
                self.send(plan)  # persisted, and its first workflow task is this process's
                self.sent_ahead += 1
            self.started += 1
            log.info("plan=%s stage=bridge event=started_workflow method=%s eager=%s", plan.plan_id, plan.execution_method.value, eager)
        except WorkflowAlreadyStartedError:
            self.forget(plan.plan_id)
            log.info("plan=%s stage=bridge event=duplicate_plan already started", plan.plan_id)
        except Exception as error:
            self.forget(plan.plan_id)
            log.warning("plan=%s stage=bridge event=start_failed error=%s; redelivering", plan.plan_id, error)
            await message.nak(delay=START_RETRY_S)
            return
        finally:
            self._starting -= 1
        await message.ack()

    async def reject(self, message: Msg, invalid: InvalidPlan) -> None:
        seq = message.metadata.sequence.stream if message.metadata else 0
        result = rejection(message.data, message.subject, seq, invalid)
        try:
            await self.publish_result(result)
        except Exception as error:
            log.warning("plan=%s stage=bridge event=reject_publish_failed error=%s", result.plan_id, error)
            await message.nak(delay=START_RETRY_S)
            return
        await message.term()
        self.rejected += 1
        log.info("plan=%s stage=bridge event=rejected code=%s error=%s", result.plan_id, invalid.code.value, str(invalid)[:300])
