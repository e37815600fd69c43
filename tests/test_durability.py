"""A worker killed with SIGKILL at the worst moments: a restarted worker finishes the plan,
with one landed transaction and one result.

Each worker is its own `hft-executor worker` process; HFT_TEST_CRASH_AFTER makes it SIGKILL
itself right after a stage (after sign recorded its transaction; after submit sent it but
before the workflow task completed; at the start of confirm, after the task completed).
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.stack import Stack, leaked, secret_forms
from worker.bridge import workflow_id


@pytest.fixture(scope="module")
async def crash_stack():
    data_dir = Path(tempfile.mkdtemp(prefix="hft-crash-"))
    running = await Stack(data_dir, slot_ms=100.0, wallets=3).start()
    running.logs = data_dir / "logs"
    running.logs.mkdir()
    yield running
    await running.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


async def start_worker(stack: Stack, name: str, **env: str):
    log_path = stack.logs / f"{name}.log"
    process = stack.worker_process(log_path, **env)
    deadline = time.monotonic() + 30
    while b"event=started" not in (log_path.read_bytes() if log_path.exists() else b""):
        assert process.poll() is None, f"worker {name} exited: {log_path.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"worker {name} not ready: {log_path.read_text()[-2000:]}"
        await asyncio.sleep(0.05)
    return process, log_path


async def stop_worker(process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        for _ in range(300):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.05)
        process.kill()


async def wait_exit(process, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        assert time.monotonic() < deadline, "the worker did not crash where it was told to"
        await asyncio.sleep(0.02)
    return process.returncode


async def survivor_result(stack, name: str, plan: dict):
    """A fresh worker takes over the crashed one's plan: its result, and the worker's log."""
    survivor, survivor_log = await start_worker(stack, name)
    try:
        return await stack.result(plan["planId"], timeout=45), survivor_log
    finally:
        await stop_worker(survivor)


def recorded_signature(worker_log) -> str:
    """The signature a worker logged when it recorded the plan's transaction."""
    return re.search(rb"stage=sign signature=(\w+)", worker_log.read_bytes()).group(1).decode()

@pytest.mark.parametrize("crash_after", ["sign", "submit", "confirm"])
async def test_worker_killed_mid_plan_restarted_worker_lands_it_once(crash_stack, crash_after):
    stack = crash_stack
    doomed, doomed_log = await start_worker(stack, f"doomed-{crash_after}", HFT_TEST_CRASH_AFTER=crash_after)
    plan = stack.plan("rpc", wallet=0, deadline_ms=60_000, max_latency_ms=60_000)
    await stack.publish(plan)
    assert await wait_exit(doomed) == -signal.SIGKILL, doomed_log.read_text()[-2000:]
    signed_by_doomed = recorded_signature(doomed_log)
    sent_before_restart = await stack.wire_transactions(plan["planId"])
    assert len(sent_before_restart) == (0 if crash_after == "sign" else 1)

    result, survivor_log = await survivor_result(stack, f"survivor-{crash_after}", plan)
    assert result["status"] == "success", (result, survivor_log.read_text()[-3000:])
    on_wire = await stack.wire_transactions(plan["planId"])
    assert [row["signature"] for row in on_wire] == [result["signature"]] == [signed_by_doomed], "one signed transaction, ever"
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    await asyncio.sleep(0.5)
    assert len(stack.results[plan["planId"]]) == 1
    logs = doomed_log.read_text() + survivor_log.read_text()
    assert leaked(logs, secret_forms(stack.dev.data_dir / "wallets")) == []


async def test_halt_after_a_crash_mid_submit_still_follows_the_sent_transaction(crash_stack):
    """The bytes went out, then the worker died and a halt arrived: the re-run must not report
    HALTED for a transaction that is on the wire; it sends nothing more and follows it."""
    stack = crash_stack
    doomed, _ = await start_worker(stack, "doomed-halt", HFT_TEST_CRASH_AFTER="submit")
    plan = stack.plan("rpc", wallet=1, deadline_ms=60_000, max_latency_ms=60_000)
    await stack.publish(plan)
    await wait_exit(doomed)
    await stack.temporal.get_workflow_handle(workflow_id(plan["planId"])).signal("halt", "halt after the crash")
    result, survivor_log = await survivor_result(stack, "survivor-halt", plan)
    assert result["status"] == "success", (result, survivor_log.read_text()[-3000:])
    on_wire = await stack.wire_transactions(plan["planId"])
    assert [row["signature"] for row in on_wire] == [result["signature"]]
    assert [row["timesReceived"] for row in on_wire] == [1], "halted: the survivor watched it and sent nothing"


async def test_halt_after_a_crash_before_the_send_ends_halted_with_nothing_on_the_wire(crash_stack):
    """The transaction was recorded but never sent, then the worker died and a halt arrived: the
    re-run cannot know the bytes never left, so it sends nothing and watches the recorded
    signature until its blockhash expires; the plan then ends HALTED and nothing ever lands."""
    stack = crash_stack
    doomed, doomed_log = await start_worker(stack, "doomed-halt-unsent", HFT_TEST_CRASH_AFTER="sign")
    plan = stack.plan("rpc", wallet=2, deadline_ms=60_000, max_latency_ms=60_000)
    await stack.publish(plan)
    await wait_exit(doomed)
    recorded = recorded_signature(doomed_log)
    await stack.temporal.get_workflow_handle(workflow_id(plan["planId"])).signal("halt", "halt after the crash")
    result, survivor_log = await survivor_result(stack, "survivor-halt-unsent", plan)
    assert (result["status"], result["errorCode"]) == ("failed", "HALTED"), (result, survivor_log.read_text()[-3000:])
    assert result["signature"] == recorded, "the result names the transaction that was watched"
    assert await stack.wire_transactions(plan["planId"]) == []


async def test_kill_switch_survives_a_worker_restart_and_announces_the_stop(crash_stack):
    stack = crash_stack
    stopped = asyncio.Queue()
    subscription = await stack.nc.subscribe("metrics.executor.stopped", cb=stopped.put)
    first, _ = await start_worker(stack, "halt-first")
    await stack.halt("risk limit reached")
    announcement = json.loads((await asyncio.wait_for(stopped.get(), 10)).data)
    assert announcement["reason"] == "risk limit reached" and announcement["executor"]
    await stop_worker(first)
    await subscription.unsubscribe()

    restarted, restarted_log = await start_worker(stack, "halt-restarted")
    try:
        assert b"event=restored halted=true" in restarted_log.read_bytes()
        plan = stack.plan("rpc", wallet=2)
        await stack.publish(plan)
        await asyncio.sleep(1.5)
        assert plan["planId"] not in stack.results, "a restarted worker is still halted"
        await stack.resume()
        result = await stack.result(plan["planId"], timeout=30)
    finally:
        await stop_worker(restarted)
    assert result["status"] == "success", result
