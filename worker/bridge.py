"""The bridge: plans from PLANNED become ExecutePlan workflows, exactly once per plan id.

It runs inside the worker process so that a workflow start can be eager (the server hands
the first workflow task straight back to this process: no poll round trip). Beside the
start it opens the plan's dispatch (record, lease, build, sign: executor/dispatch.py) and,
once an eager start is answered, sends it (`Dispatcher.beside_start` owns the prepare-ahead
limit, the send and the abandon; the bridge only says whether the start was eager); the
workflow's `execute` claims both. So a plan goes parse -> already told? -> start -> ack. A message
is acked only once the start is accepted; an id already started counts as accepted, and a
plan id that already has a stored result is never started again (Temporal forgets closed
workflows after its retention; PLANNED can redeliver a plan for longer), which is what
makes a redelivered or re-published plan harmless. A plan that does not parse gets its
failed result here and its message is terminated, never redelivered. While the kill switch
is on the bridge takes nothing: plans wait in the stream.

No message holds a slot of the consumer for ever (issue 19): parsing is total (any exception of
the parser is the plan's invalidity, answered), a rejection is always publishable (bounded ids,
subject and body: workflows/limits.py) so only NATS being away can hold it, and every retry of a
message that cannot go on yet is a nak with a growing delay, never a silent redelivery loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.common import RawValue, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from executor.dispatch import Dispatcher, StartAhead
from executor.records import PlanRecords
from workflows.events import ErrorCode, ExecutionResultEvent, InvalidPlan, is_valid_plan, parse_plan, rejection
from workflows.execute_plan import plan_workflow_id, search_attributes

from .streams import PLANNED_SUBJECTS

log = logging.getLogger("hft.bridge")
DURABLE = "executor-bridge"
START_RETRY_S = 1.0
# A message that cannot go on yet (its rejection's publish failed: NATS away) comes back after
# 1, 2, 4 ... s, at most this: a long outage costs a retry every half minute, not a spin.
MAX_RETRY_S = 30.0
# A message whose handling raised (a bug, not NATS being away: that fails the publish, not the
# handling) this many times is told by its sequence alone and terminated, unless it is a valid
# plan: a plan's workflow may have started, and the workflow tells its result.
GIVE_UP_AFTER = 5
# How long a plan taken by a bridge that died stays invisible before another worker gets it
# (JetStream's ack wait): a bridge still busy with a start says so (in progress) every half of it.
ACK_WAIT_S = 1.0
# How long a workflow task may go silent before the server hands it to another worker: a dead
# worker's plans run again this much after it died. Local activities heartbeat the task at 80%
# of it, so a shorter one costs history events during long confirms.
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=1.5)
# temporalio (1.x) marks a handle whose start response carried the first workflow task, which
# the SDK hands to this process's worker. Absent (another SDK version), nothing is sent ahead.
# The one SDK-specific part of the send ahead: the dispatcher is told a plain bool.
EAGERLY_STARTED = "__temporal_eagerly_started"
JSON_PLAIN = {"encoding": b"json/plain"}


def workflow_id(plan_id: str) -> str:
    return plan_workflow_id(plan_id)


def _delivered(message: Msg) -> int:
    """How many times JetStream has delivered this message, this time included."""
    try:
        return max(1, int(message.metadata.num_delivered))
    except Exception:  # not a JetStream message (no metadata): the first delivery
        return 1


def _retry_delay(delivered: int) -> float:
    return min(START_RETRY_S * 2 ** (delivered - 1), MAX_RETRY_S)


class PlanBridge:
    def __init__(
        self,
        js: JetStreamContext,
        client: Client,
        task_queue: str,
        publish_result: Callable[[ExecutionResultEvent, str], Awaitable[None]],
        halted: Callable[[], str | None],
        *,
        records: PlanRecords | None = None,
        dispatcher: Dispatcher | None = None,
        max_in_flight: int = 256,
        ack_wait_s: float = ACK_WAIT_S,
    ) -> None:
        self.js = js
        self.client = client
        self.task_queue = task_queue
        self.publish_result = publish_result
        self.halted = halted
        self.records = records
        self.dispatcher = dispatcher
        self.max_in_flight = max_in_flight
        self.ack_wait_s = ack_wait_s
        self.started = 0
        self.sent_ahead = 0  # starts whose send followed at once, in this process (eager)
        self.rejected = 0
        self.take_failures = 0  # messages whose handling raised (a bug): each is retried after a pause
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    async def run(self) -> None:
        config = ConsumerConfig(
            name=DURABLE,
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=self.max_in_flight,  # backpressure: at most this many plans between stream and workflow
            ack_wait=self.ack_wait_s,
            filter_subject=PLANNED_SUBJECTS,
        )
        subscription = await self._subscribe(config)
        log.info("stage=bridge event=started durable=%s maxInFlight=%d ackWaitS=%s", DURABLE, self.max_in_flight, self.ack_wait_s)
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

    async def _subscribe(self, config: ConsumerConfig):
        """Create the consumer (or bring an existing one's settings, an older ack wait, up to date) and pull
        from it. NATS away at this moment (a restart, an election) is waited out, not a reason for the
        bridge to end: a connection gone for good ends the worker by its own path (worker/main.py)."""
        delay = 0.5
        while True:
            try:
                await self.js.add_consumer("PLANNED", config=config)
                return await self.js.pull_subscribe(PLANNED_SUBJECTS, durable=DURABLE, stream="PLANNED")
            except Exception as error:
                if self._stopping:
                    raise
                log.warning("stage=bridge event=subscribe_failed error=%s: %s; again in %.1f s", type(error).__name__, str(error)[:200], delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        self._stopping = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def take(self, message: Msg) -> None:
        try:
            await self._take(message)
        except Exception as error:  # the last resort: logged, counted, and back in the stream after a pause
            delivered = _delivered(message)
            self.take_failures += 1
            log.error("stage=bridge event=take_failed delivery=%d error=%s: %s", delivered, type(error).__name__, str(error)[:300])
            if delivered >= GIVE_UP_AFTER and not is_valid_plan(message.data):
                # Not a plan, and this bridge cannot even reject it: told by its sequence alone, and terminated.
                with contextlib.suppress(Exception):
                    await self.reject(message, InvalidPlan(ErrorCode.INVALID_PLAN, f"invalid plan: could not be handled ({type(error).__name__})"), echo=False)
                    return
            with contextlib.suppress(Exception):
                await message.nak(delay=_retry_delay(delivered))

    async def _take(self, message: Msg) -> None:
        try:
            plan = parse_plan(message.data, now_ms=int(time.time() * 1000))
        except InvalidPlan as invalid:
            await self.reject(message, invalid)
            return
        except Exception as error:  # a validator raising what it should not: still this input's fault, still answered
            await self.reject(message, InvalidPlan(ErrorCode.INVALID_PLAN, f"invalid plan: could not be read ({type(error).__name__})"))
            return
        if self.halted() is not None:
            await message.nak(delay=1.0)  # halted while this one was in hand: it waits in the stream
            return
        log.info("plan=%s stage=bridge event=received", plan.plan_id)
        if self.dispatcher is not None:
            self.dispatcher.crash_point("received")
        busy = asyncio.create_task(self._in_progress(message))
        try:
            await self._start(message, plan)
        finally:
            busy.cancel()

    async def _start(self, message: Msg, plan) -> None:
        """Already told? -> start -> ack, with the plan's dispatch prepared beside the start."""
        told = asyncio.create_task(self.records.result(plan.plan_id)) if self.records is not None else None
        # The record read, lease, build and signature overlap the start's round trip; the send waits for
        # it. Whatever way this block ends without `started`, the dispatcher undoes what it opened.
        with self.dispatcher.beside_start(plan) if self.dispatcher is not None else StartAhead(None, None) as ahead:
            try:
                already_told = told is not None and await told is not None
            except Exception as error:  # the records are away (NATS): the start waits for them
                log.warning("plan=%s stage=bridge event=records_unavailable error=%s; redelivering", plan.plan_id, error)
                await message.nak(delay=START_RETRY_S)
                return
            if already_told:
                log.info("plan=%s stage=bridge event=duplicate_plan already has a result", plan.plan_id)
                await message.ack()
                return
            try:
                handle = await self.client.start_workflow(
                    "ExecutePlan",
                    RawValue(Payload(metadata=JSON_PLAIN, data=message.data)),  # the plan as the planner wrote it
                    id=workflow_id(plan.plan_id),
                    task_queue=self.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,  # a plan id runs once, ever
                    request_eager_start=True,
                    task_timeout=WORKFLOW_TASK_TIMEOUT,
                    search_attributes=search_attributes(plan),
                    static_summary=f"{plan.execution_method.value} {plan.strategy.value} {plan.opportunity_id}",
                )
                eager = bool(getattr(handle, EAGERLY_STARTED, False))
                if ahead.started(eager=eager):
                    self.sent_ahead += 1  # persisted, and its first workflow task is this process's
                self.started += 1
                log.info("plan=%s stage=bridge event=started_workflow method=%s eager=%s", plan.plan_id, plan.execution_method.value, eager)
            except WorkflowAlreadyStartedError:
                log.info("plan=%s stage=bridge event=duplicate_plan already started", plan.plan_id)
            except RPCError as error:
                if error.status == RPCStatusCode.INVALID_ARGUMENT:
                    # Temporal refuses this start for what it holds, and would again: the plan is answered, not retried.
                    await self.reject(message, InvalidPlan(ErrorCode.INVALID_PLAN, f"invalid plan: Temporal refused its workflow: {error.message[:300]}"))
                    return
                log.warning("plan=%s stage=bridge event=start_failed error=%s; redelivering", plan.plan_id, error)
                await message.nak(delay=START_RETRY_S)
                return
            except Exception as error:
                log.warning("plan=%s stage=bridge event=start_failed error=%s; redelivering", plan.plan_id, error)
                await message.nak(delay=START_RETRY_S)
                return
        await message.ack()

    async def _in_progress(self, message: Msg) -> None:
        """A start can take longer than the ack wait (a busy or restarting server): keep the plan ours."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 2)
            try:
                await message.in_progress()
            except Exception:  # NATS away: the plan is redelivered, and REJECT_DUPLICATE keeps it one workflow
                pass

    async def reject(self, message: Msg, invalid: InvalidPlan, *, echo: bool = True) -> None:
        """The failed result of a message that is not a plan, keyed by its sequence; ``echo=False`` names it
        by the sequence and subject alone (nothing of its content)."""
        seq = message.metadata.sequence.stream if message.metadata else 0
        delivered = _delivered(message)
        tail = message.subject.removeprefix("execution.planned.")  # rejection() keeps it only if it is a bounded id
        result = rejection(
            message.data if echo else b"", invalid, fallback_plan_id=f"invalid-PLANNED-{seq}", fallback_opportunity=tail, execution_id=None,
            now_ms=int(time.time() * 1000),
        )  # fmt: skip
        try:
            # Keyed by the message, not the plan id it claims: a valid plan with that id must still be told.
            await self.publish_result(result, f"rejected-PLANNED-{seq}")
        except Exception as error:
            delay = _retry_delay(delivered)
            log.warning("plan=%s stage=bridge event=reject_publish_failed delivery=%d error=%s; again in %.0f s", result.plan_id, delivered, error, delay)
            await message.nak(delay=delay)
            return
        await message.term()
        self.rejected += 1
        log.info("plan=%s stage=bridge event=rejected code=%s error=%s", result.plan_id, invalid.code.value, str(invalid)[:300])

