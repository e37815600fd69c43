"""Outages longer than a plan's bookkeeping: the result is late, never lost and never wrong.

Its own stack (the servers are killed here) with an in-process worker.
"""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from temporalio.common import RetryPolicy

from tests.stack import stack_with_worker, wait_until
from worker.bridge import workflow_id
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
