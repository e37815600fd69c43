"""Outages longer than a plan's bookkeeping, and a worker stopped during one: the result is
late, never lost and never wrong.

Its own stack (the servers are killed here) with an in-process worker.
"""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import RetryPolicy

from executor import confirm
from tests.stack import stack_with_worker, wait_until
from worker import main as worker_main
from worker.bridge import workflow_id
from worker.main import ExecutorWorker
from workflows import execute_plan


@pytest.fixture(scope="module")
async def outage_stack():
    async with stack_with_worker("hft-outage-", slot_ms=50.0, wallets=3) as running:
        yield running


async def test_a_result_outlives_a_nats_outage_longer_than_the_bookkeeping_retries(outage_stack, monkeypatch):
    """NATS dies between the send and the result, for longer than any bookkeeping step may retry
    (shortened here to two attempts, 2 s): the plan's result comes once NATS is back, and says
    what the chain says."""
    stack = outage_stack
    short = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(seconds=1), maximum_attempts=2)
    monkeypatch.setattr(execute_plan, "BOOKKEEPING_RETRY", short)
    monkeypatch.setattr(execute_plan, "BOOKKEEPING_TIME", timedelta(seconds=2))
    monkeypatch.setattr(execute_plan, "BOOKKEEPING_ATTEMPT", timedelta(seconds=2), raising=False)
    failures_before = stack.worker.metrics.publish_failures._value.get()
    plan = stack.plan("rpc", wallet=0, deadline_ms=5_000, max_latency_ms=5_000)
    await stack.faults({"reads": {"delay_ms": 400}})  # confirm takes a moment: NATS dies before the result
    try:
        await stack.publish(plan)
        await wait_until(lambda: stack.wire_transactions(plan["planId"]), timeout=10, every=0.01)
        stack.dev.nats.kill()
        down_since = time.monotonic()
        await asyncio.sleep(8.0)
    finally:
        await stack.clear_faults()
    await stack.dev.nats.restart()
    result = await stack.result(plan["planId"], timeout=60)
    waited = time.monotonic() - down_since
    assert result["status"] == "success", result
    assert waited > 8.0
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    told = await stack.temporal.get_workflow_handle(workflow_id(plan["planId"])).result()
    assert told["status"] == "success"
    assert stack.worker.metrics.publish_failures._value.get() > failures_before, "each failed attempt is counted (alert on it)"


async def test_a_worker_stopped_during_a_chain_outage_hands_its_plan_over(outage_stack, monkeypatch):
    """A deploy stops the worker while a plan waits on a chain that answers no status read: the
    stop ends after the shutdown grace, not when the outage does, and the next worker tells the
    plan's outcome, once. (Before: the SDK retried the confirm inside the stopping worker, and the
    stop waited for it for as long as the chain was silent.)"""
    stack = outage_stack
    monkeypatch.setattr(confirm, "CHAIN_SILENCE_S", 300.0)  # a confirm attempt waits out the outage itself
    monkeypatch.setattr(worker_main, "SHUTDOWN_GRACE", timedelta(seconds=2))
    await stack.worker.stop()
    stack.worker = ExecutorWorker(stack.config, stack.dev.keys)
    await stack.worker.start()
    plan = stack.plan("rpc", wallet=1)
    await stack.faults({"reads": {"reject": 1.0}})
    try:
        await stack.publish(plan)
        await wait_until(lambda: stack.wire_transactions(plan["planId"]), timeout=10, every=0.01)
        await asyncio.sleep(0.5)  # confirm is following it, and hears nothing
        started = time.monotonic()
        await asyncio.wait_for(stack.worker.stop(), 120)
        stopped_in = time.monotonic() - started
    finally:
        await stack.clear_faults()
    assert stopped_in < 20, f"the stop took {stopped_in:.1f} s with a 2 s grace"
    assert plan["planId"] not in stack.results, "the stopping worker said nothing it did not know"
    stack.worker = ExecutorWorker(stack.config, stack.dev.keys)
    await stack.worker.start()
    result = await stack.result(plan["planId"], timeout=60)
    assert result["status"] == "success", result
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    await asyncio.sleep(1.0)
    assert len(stack.publishes[plan["planId"]]) == 1


async def test_a_confirm_that_waits_long_continues_as_new_and_tells_the_chains_outcome_once(outage_stack, monkeypatch):
    """The chain answers no status read for long enough that the plan's history grows past its
    bound (shortened here; Temporal would end the workflow at 51,200 events, about 6 hours of a
    running confirm): the plan continues as new, follows the same transaction, and tells what
    the chain says once it answers, once, with the latency of the whole wait."""
    stack = outage_stack
    monkeypatch.setattr(confirm, "CHAIN_SILENCE_S", 1.0)  # each confirm attempt gives up after 1 s of silence
    monkeypatch.setattr(execute_plan, "FOLLOW_ON_AFTER_EVENTS", 30)
    plan = stack.plan("rpc", wallet=2)
    handle = stack.temporal.get_workflow_handle(workflow_id(plan["planId"]))
    await stack.faults({"reads": {"reject": 1.0}})
    try:
        await stack.publish(plan)
        first_run = (await wait_until(lambda: _described(handle), timeout=10)).run_id
        await wait_until(lambda: _continued(stack, handle, first_run), timeout=90, every=0.5)
        await asyncio.sleep(2.0)  # the continued run is following too
    finally:
        await stack.clear_faults()
    result = await stack.result(plan["planId"], timeout=60)
    assert result["status"] == "success", result
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    assert result["latency"] > 5_000, "latency counts from the first run's start"
    told = await handle.result()  # follows the runs to the last one
    assert told["status"] == "success" and told["signature"] == result["signature"]
    await asyncio.sleep(1.0)
    assert len(stack.publishes[plan["planId"]]) == 1


async def _described(handle):
    try:
        return await handle.describe()
    except Exception:  # not started yet
        return None


async def _continued(stack, handle, first_run) -> bool:
    first = await stack.temporal.get_workflow_handle(handle.id, run_id=first_run).describe()
    return first.status == WorkflowExecutionStatus.CONTINUED_AS_NEW
