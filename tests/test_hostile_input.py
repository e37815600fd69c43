"""Bad input never stops the bus (issue 19): each case that took a worker off NATS, left a plan
unanswered or held the bridge's slots, tried as a planner would, through the real bus.

The property-based fuzz of the same boundary is tests/test_hostile_fuzz.py."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import nats.js.errors
import pytest

from tests.stack import stop_worker, wait_until
from worker.bridge import DURABLE
from worker.main import EXIT_CONNECTION_LOST, ConnectionLost, ExecutorWorker
from worker.nats_security import ROLES
from workflows.limits import MAX_DEADLINE_AHEAD_MS, MAX_PLAN_BYTES, NATS_MAX_CONTROL_LINE


async def _settled(stack, timeout: float = 15.0) -> None:
    """Until nothing waits on PLANNED: every message acked or terminated."""

    async def settled():
        consumer = await stack.js.consumer_info("PLANNED", DURABLE)
        return consumer.num_ack_pending == 0 and consumer.num_pending == 0

    await wait_until(settled, timeout=timeout, every=0.1)


async def test_an_opportunity_id_past_the_control_line_is_answered_and_no_worker_leaves_the_bus(stack):
    """Case 1: the rejection of this plan went to executed.failed.<5,004 characters>, past nats-server's
    4,096-byte control line, and the server closed the worker's connection for good."""
    plan = stack.plan("rpc")
    plan["opportunityId"] = "o" * 5004
    await stack.publish(plan, subject="execution.planned.short")
    told = await stack.result(plan["planId"], timeout=15)
    assert (told["status"], told["errorCode"]) == ("failed", "INVALID_PLAN")
    assert "opportunityId" in told["error"]
    assert told["opportunityId"] == "short", "the subject's own token stands in for an unusable id"
    assert len(json.dumps(told)) < 4096, "the rejection does not echo the plan"
    assert stack.worker.nc.is_connected, "the worker is still on the bus"
    await _settled(stack)
    alive = await stack.execute(stack.plan("rpc", wallet=1))
    assert alive["status"] == "success", alive


async def test_ids_ending_in_a_newline_are_answered_not_redelivered_for_ever(stack):
    """Case 2: `re.match` with `$` let "opp\\n" through to a subject nats-py refuses; the plan was
    nak'ed and redelivered every second for the 7 days PLANNED keeps it."""
    cases = []
    for field in ("opportunityId", "planId"):
        plan = stack.plan("rpc")
        plan[field] = plan[field] + "\n"
        seq = await stack.publish(plan, subject=f"execution.planned.newline-{field}")
        cases.append((field, plan, seq))
    for field, plan, seq in cases:
        key = plan["planId"] if field == "opportunityId" else f"invalid-PLANNED-{seq}"
        told = await stack.result(key, timeout=15)
        assert (told["status"], told["errorCode"]) == ("failed", "INVALID_PLAN"), (field, told)
        assert field in told["error"], told
        assert "\n" not in told["planId"] + told["opportunityId"]
    await _settled(stack)
    consumer = await stack.js.consumer_info("PLANNED", DURABLE)
    assert consumer.num_redelivered == 0


async def test_more_unanswerable_plans_than_the_bridge_has_slots_do_not_stop_it(stack):
    """Case 3: 256 such plans held every ack-pending slot of the bridge, and a valid plan was never taken."""
    count = stack.worker.bridge.max_in_flight + 10
    sent = []
    for index in range(count):
        plan = stack.plan("rpc")
        plan["opportunityId"] = f"opp-{index}\n"
        await stack.publish(plan, subject="execution.planned.flood")
        sent.append(plan["planId"])
    valid = stack.plan("rpc", wallet=2)
    await stack.publish(valid)
    told = await stack.result(valid["planId"], timeout=60)
    assert told["status"] == "success", told
    for plan_id in sent:
        assert (await stack.result(plan_id, timeout=30))["errorCode"] == "INVALID_PLAN"
    await _settled(stack, timeout=30)


async def test_unbounded_inputs_are_refused(stack):
    """Case 5: a deadline with no upper bound (a plan id published again after its record's TTL would
    be signed again), numbers that are not finite, a plan of any size."""
    far = stack.plan("rpc")
    far["deadline"] = int(time.time() * 1000) + MAX_DEADLINE_AHEAD_MS + 60_000
    infinite = stack.plan("rpc")
    raw = json.dumps(infinite).replace('"simulationSuccess": true', '"solPriceUsd": 1e400, "simulationSuccess": true').encode()
    not_a_number = stack.plan("rpc")
    nan = json.dumps(not_a_number).replace('"simulationSuccess": true', '"solPriceUsd": NaN, "simulationSuccess": true').encode()
    assert raw != json.dumps(infinite).encode() and nan != json.dumps(not_a_number).encode()
    await stack.publish(far)
    await stack.publish(raw, subject="execution.planned.infinite")
    await stack.publish(nan, subject="execution.planned.nan")
    for plan, word in ((far, "deadline"), (infinite, "solPriceUsd"), (not_a_number, "solPriceUsd")):
        told = await stack.result(plan["planId"], timeout=15)
        assert (told["status"], told["errorCode"]) == ("failed", "INVALID_PLAN"), told
        assert word in told["error"], told
        assert await stack.wire_transactions(plan["planId"]) == [], "nothing of it was sent"

    # PLANNED itself refuses a message past the plan size limit: the planner is told at publish.
    huge = stack.plan("rpc")
    huge["padding"] = "x" * MAX_PLAN_BYTES
    with pytest.raises(nats.js.errors.APIError, match="(?i)maximum"):
        await stack.publish(huge)


async def test_a_worker_whose_nats_connection_the_server_closes_ends_with_the_reason(stack, worker_log):
    """Case 4, from the same cause as case 1: the server closes a connection that sends a control line
    past its limit. When nats-py reads the -ERR first it never reconnects, and the worker must not live
    on with it: run_until ends with ConnectionLost, which the worker command turns into exit 75."""
    config = stack.config.model_copy(update={"executor_name": f"doomed-{uuid.uuid4().hex[:6]}"})
    doomed = ExecutorWorker(config, stack.dev.keys)
    await doomed.start()
    try:
        running = asyncio.create_task(doomed.run_until(asyncio.Event()))
        await doomed.nc.publish("executed.failed." + "x" * NATS_MAX_CONTROL_LINE, b"")
        # nats-py reads the server's -ERR and closes for good, or (under load, measured) sees the socket
        # close first and reconnects: either way the worker must not live on with a dead connection.
        deadline = time.monotonic() + 10
        while not running.done() and not (doomed.nc.stats["reconnects"] and doomed.nc.is_connected):
            assert time.monotonic() < deadline, "the worker lives on with a connection the server closed"
            await asyncio.sleep(0.05)
        if running.done():
            with pytest.raises(ConnectionLost) as lost:
                running.result()
            assert lost.value.service == "nats"
            assert "control line" in lost.value.reason.lower(), lost.value.reason
            assert any("stage=nats event=connection_lost" in line and "control line" in line.lower() for line in worker_log.lines)
            assert doomed.metrics.connections_lost.labels("nats")._value.get() == 1
        else:  # replaced by nats-py itself: the bus works again for this worker
            await doomed.js.account_info()
            running.cancel()
    finally:
        started = time.monotonic()
        await doomed.stop()
        assert time.monotonic() - started < 15, "a worker with a dead bus stops in seconds"
    alive = await stack.execute(stack.plan("rpc", wallet=3))
    assert alive["status"] == "success", "the other worker goes on"


async def test_a_worker_process_whose_user_is_revoked_exits_for_its_supervisor(stack, tmp_path):
    """Another server-side close: a permissions change (the worker's user removed from the server's
    config and the config reloaded). nats-server closes the connection with "Authorization Violation",
    nats-py gives up on it, and the `hft-executor worker` process exits with EXIT_CONNECTION_LOST (75)
    so that its supervisor starts it anew, instead of living on with no bus."""
    security, server = stack.dev.security, stack.dev.nats
    role = f"worker-{uuid.uuid4().hex[:6]}"

    def reload() -> None:
        server.config_file.write_text(server.config())
        os.kill(server.pid, signal.SIGHUP)

    security.roles[role] = ROLES["worker"]
    security.passwords[role] = uuid.uuid4().hex
    reload()
    await asyncio.sleep(1.0)  # the reload is applied asynchronously
    process = None
    try:
        process, log_path = await stack.start_worker(tmp_path, role, NATS_USER=role, NATS_PASSWORD=security.passwords[role])
        del security.roles[role]
        reload()
        deadline = time.monotonic() + 20
        while process.poll() is None:
            assert time.monotonic() < deadline, f"the worker lived on without its bus: {log_path.read_text()[-2000:]}"
            await asyncio.sleep(0.1)
        text = log_path.read_text()
        assert process.returncode == EXIT_CONNECTION_LOST, text[-2000:]
        assert "stage=nats event=connection_lost" in text and "authorization" in text.lower(), text[-2000:]
    finally:
        security.roles.pop(role, None)
        reload()
        if process is not None:
            await stop_worker(process)
