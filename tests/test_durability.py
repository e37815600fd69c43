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
from solders.keypair import Keypair
from solders.signature import Signature

from tests.stack import Stack, leaked, secret_forms, stop_worker, wait_exit
from worker.bridge import workflow_id
from workflows.execute_plan import PLAN_STATUS


@pytest.fixture(scope="module")
async def crash_stack():
    data_dir = Path(tempfile.mkdtemp(prefix="hft-crash-"))
    running = await Stack(data_dir, slot_ms=100.0, wallets=3, status_cache_slots=8).start()
    running.logs = data_dir / "logs"
    running.logs.mkdir()
    yield running
    await running.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


async def start_worker(stack: Stack, name: str, **env: str):
    return await stack.start_worker(stack.logs, name, **env)


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


async def recorded(stack, plan_id: str):
    from executor.records import PlanRecords

    return (await (await PlanRecords.open(stack.js)).read(plan_id)).signed


async def wait_forgotten(stack, plan_id: str) -> str:
    """Until the plan's transaction has landed, its blockhash has expired and the node's recent
    status cache no longer knows it: what a re-run after a long outage finds."""
    from tests.stack import wait_until

    signed = await recorded(stack, plan_id)
    await wait_until(lambda: stack.landed_for(plan_id), timeout=20)
    await stack.wait_block_height_past(signed.last_valid_block_height)

    async def forgotten() -> bool:
        statuses = await stack.rpc.get_signature_statuses([Signature.from_string(signed.signature)])
        return statuses.value[0] is None

    await wait_until(forgotten, timeout=30, every=0.2)
    return signed.signature


async def test_a_survivor_long_after_the_deadline_reports_the_landing_not_a_timeout(crash_stack):
    """The worker died right after the send; the survivor comes after maxLatency, after the
    blockhash expired, after the status cache forgot it. It still asks the chain properly."""
    stack = crash_stack
    doomed, _ = await start_worker(stack, "doomed-late", HFT_TEST_CRASH_AFTER="submit")
    plan = stack.plan("rpc", wallet=0, deadline_ms=3_000, max_latency_ms=3_000)
    await stack.publish(plan)
    await wait_exit(doomed)
    signature = await wait_forgotten(stack, plan["planId"])

    result, survivor_log = await survivor_result(stack, "survivor-late", plan)
    assert (result["status"], result["signature"]) == ("success", signature), (result, survivor_log.read_text()[-3000:])
    assert len(stack.publishes[plan["planId"]]) == 1
    assert await stack.landed_for(plan["planId"]) == [signature]


async def test_a_survivor_without_the_plans_wallet_key_follows_the_recorded_transaction(crash_stack, tmp_path):
    """A re-run reads the record before it leases: a survivor that holds no key for the wallet
    that signed (or finds it full) still follows the transaction that was sent."""
    stack = crash_stack
    doomed, _ = await start_worker(stack, "doomed-nokey", HFT_TEST_CRASH_AFTER="submit")
    plan = stack.plan("rpc", wallet=1, deadline_ms=60_000, max_latency_ms=60_000)
    await stack.publish(plan)
    await wait_exit(doomed)
    keys = tmp_path / "keys"  # every wallet but the one that signed
    keys.mkdir(mode=0o700)
    for source in sorted((stack.dev.data_dir / "wallets").glob("*.json")):
        if str(Keypair.from_bytes(bytes(json.loads(source.read_text()))).pubkey()) != plan["wallet"]:
            (keys / source.name).write_bytes(source.read_bytes())
            (keys / source.name).chmod(0o600)
    assert len(list(keys.glob("*.json"))) == 2

    survivor, survivor_log = await start_worker(stack, "survivor-nokey", WALLET_KEYS_DIR=str(keys))
    try:
        result = await stack.result(plan["planId"], timeout=45)
    finally:
        await stop_worker(survivor)
    assert result["status"] == "success", (result, survivor_log.read_text()[-3000:])
    assert result["wallet"] == plan["wallet"]
    assert [row["signature"] for row in await stack.wire_transactions(plan["planId"])] == [result["signature"]]


async def test_one_plan_one_story_when_a_worker_dies_right_after_publishing(crash_stack):
    """The result went out, the worker died before Temporal heard: the re-run tells the same story
    (every publish, Temporal's own result and PlanStatus), even after the chain forgot the details."""
    stack = crash_stack
    doomed, _ = await start_worker(stack, "doomed-publish", HFT_TEST_CRASH_AFTER="publish")
    plan = stack.plan("rpc", wallet=2, deadline_ms=3_000, max_latency_ms=3_000)
    await stack.publish(plan)
    await wait_exit(doomed)
    first = await stack.result(plan["planId"], timeout=10)
    assert first["status"] == "success", first
    await wait_forgotten(stack, plan["planId"])

    handle = stack.temporal.get_workflow_handle(workflow_id(plan["planId"]))
    survivor, survivor_log = await start_worker(stack, "survivor-publish")
    try:
        told = await asyncio.wait_for(handle.result(), 45)  # the re-run, to its end
    finally:
        await stop_worker(survivor)
    await asyncio.sleep(0.5)
    assert {p["status"] for p in stack.publishes[plan["planId"]]} == {"success"}, (stack.publishes[plan["planId"]], survivor_log.read_text()[-3000:])
    assert len(stack.results[plan["planId"]]) == 1
    assert told["status"] == "success" and told["signature"] == first["signature"]
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(PLAN_STATUS) == "success"


async def test_a_plan_held_by_a_dead_bridge_runs_again_within_seconds(crash_stack):
    """A bridge that dies holding an un-acked plan gives it back after the ack wait (1 s), not 30 s."""
    stack = crash_stack
    survivor, survivor_log = await start_worker(stack, "survivor-bridge")
    doomed, doomed_log = await start_worker(stack, "doomed-bridge", HFT_TEST_CRASH_AFTER="received")
    try:
        plans = []
        for _ in range(30):  # until the doomed bridge takes one
            plans.append(stack.plan("rpc", wallet=len(plans) % 3, deadline_ms=20_000, max_latency_ms=20_000))
            await stack.publish(plans[-1])
            await asyncio.sleep(0.1)
            if doomed.poll() is not None:
                break
        await wait_exit(doomed)
        died = time.monotonic()
        held = re.search(rb"plan=(\S+) stage=bridge event=received", doomed_log.read_bytes()).group(1).decode()
        result = await stack.result(held, timeout=15)
        took = time.monotonic() - died
        for plan in plans:
            await stack.result(plan["planId"], timeout=30)
    finally:
        await stop_worker(survivor)
    assert result["status"] == "success", (result, survivor_log.read_text()[-3000:])
    assert took < 12.0, f"the plan the dead bridge held came back after {took:.1f} s (the ack wait is 1 s; it was 30 s)"
