"""Bad input gets a clear error and loses nothing: a failed result with its code, the message
terminated (never redelivered), the worker still taking plans."""
from __future__ import annotations

import asyncio
import copy
import uuid

from temporalio.client import WorkflowExecutionStatus

from worker.bridge import DURABLE


def _without(plan: dict, field: str) -> dict:
    plan = copy.deepcopy(plan)
    del plan[field]
    return plan


def _with(plan: dict, path: str, value) -> dict:
    plan = copy.deepcopy(plan)
    target = plan
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[int(last) if last.isdigit() else last] = value
    return plan


def malformed(plan: dict) -> dict[str, tuple[bytes | dict, str, str]]:
    """kind -> (message, expected code, a word the error must contain)."""
    instruction = "routes.0.instructions.0"
    return {
        "not JSON": (b"{this is not json", "INVALID_PLAN", "invalid"),
        "not UTF-8": (b"\xff\xfe\x00plan", "INVALID_PLAN", "invalid"),
        "JSON array instead of object": (b"[1, 2, 3]", "INVALID_PLAN", "invalid"),
        "missing routes": (_without(plan, "routes"), "INVALID_PLAN", "routes"),
        "unknown execution method": (_with(plan, "executionMethod", "carrier_pigeon"), "INVALID_PLAN", "executionMethod"),
        "not simulated": (_with(plan, "simulationSuccess", False), "PLAN_NOT_SIMULATED", "simulationSuccess"),
        "input token not a pubkey": (_with(plan, "inputToken", "not-a-key"), "INVALID_PLAN", "inputToken"),
        "account not a pubkey": (_with(plan, f"{instruction}.accounts.0.pubkey", "0xdeadbeef"), "INVALID_PLAN", "pubkey"),
        "bad wallet placeholder": (_with(plan, f"{instruction}.accounts.0.pubkey", "$WALLET_ATA:nope"), "INVALID_PLAN", "pubkey"),
        "instruction data not base64": (_with(plan, f"{instruction}.data", "!!not base64!!"), "INVALID_PLAN", "base64"),
        "unknown field": (_with(plan, "surprise", 1), "INVALID_PLAN", "surprise"),
        "negative amount": (_with(plan, "inputAmount", -5), "INVALID_PLAN", "inputAmount"),
        "amount as a string": (_with(plan, "inputAmount", "1000"), "INVALID_PLAN", "inputAmount"),
        "compute units over the cap": (_with(plan, "gasEstimate", 2_000_000), "INVALID_PLAN", "gasEstimate"),
        "no routes": (_with(plan, "routes", []), "INVALID_PLAN", "routes"),
        "too many routes": (_with(plan, "routes", plan["routes"] * 9), "INVALID_PLAN", "routes"),
        "plan id with spaces": (_with(plan, "planId", "bad id!"), "INVALID_PLAN", "planId"),
        "zero maxLatency": (_with(plan, "maxLatency", 0), "INVALID_PLAN", "maxLatency"),
        # The opportunity id becomes a result subject: an empty token would make one no stream takes.
        "opportunityId with a double dot": (_with(plan, "opportunityId", "opp..1"), "INVALID_PLAN", "opportunityId"),
        "opportunityId with a trailing dot": (_with(plan, "opportunityId", "opp."), "INVALID_PLAN", "opportunityId"),
        "deadline in nanoseconds": (_with(plan, "deadline", plan["deadline"] * 1_000_000), "INVALID_PLAN", "deadline"),
    }


async def test_malformed_plans_each_get_a_failed_result_and_are_not_redelivered(stack):
    cases = malformed(stack.plan("rpc"))
    expected_key = {}
    for index, (kind, (message, _, _)) in enumerate(cases.items()):
        if isinstance(message, dict) and kind != "plan id with spaces":
            message["planId"] = f"bad-{index}-{message['planId']}"
            expected = message["planId"]
        else:
            expected = None
        seq = await stack.publish(message, subject=f"execution.planned.malformed-{index}")
        expected_key[kind] = expected or f"invalid-PLANNED-{seq}"

    for kind, (_, code, word) in cases.items():
        result = await stack.result(expected_key[kind], timeout=15)
        assert result["status"] == "failed", kind
        assert result["errorCode"] == code, (kind, result)
        assert word.lower() in result["error"].lower(), (kind, result["error"])
        assert result.get("signature") is None

    await asyncio.sleep(0.5)
    consumer = await stack.js.consumer_info("PLANNED", DURABLE)
    assert consumer.num_ack_pending == 0, "every malformed message was settled"
    assert consumer.num_redelivered == 0, "none was redelivered"
    assert all(len(stack.results[key]) == 1 for key in expected_key.values())

    alive = await stack.execute(stack.plan("rpc", wallet=4))
    assert alive["status"] == "success", "the worker keeps taking plans"


async def test_a_workflow_started_without_the_bridge_checks_its_input_as_the_bridge_does(stack):
    """A client can start ExecutePlan directly (the UI, the CLI, an SDK): whatever it is given, the
    workflow ends with a failed result and a code, never a workflow task failing forever."""
    plan = stack.plan("rpc")
    cases = {
        "not a plan": ([{"surprise": 1}], "INVALID_PLAN"),
        "no input": ([], "INVALID_PLAN"),
        "two inputs": ([plan, plan], "INVALID_PLAN"),
        "deadline in nanoseconds": ([_with(stack.plan("rpc"), "deadline", plan["deadline"] * 1_000_000)], "INVALID_PLAN"),
        "not simulated": ([_with(stack.plan("rpc"), "simulationSuccess", False)], "PLAN_NOT_SIMULATED"),
    }
    for index, (kind, (args, code)) in enumerate(cases.items()):
        execution = f"direct-{index}-{uuid.uuid4().hex[:8]}"
        handle = await stack.temporal.start_workflow("ExecutePlan", args=args, id=execution, task_queue=stack.config.temporal_task_queue)
        told = await asyncio.wait_for(handle.result(), 20)
        assert (told["status"], told["errorCode"]) == ("failed", code), (kind, told)
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED, kind
        await stack.result(told["planId"], timeout=10)
        published = [r for r in stack.results[told["planId"]] if r["executionId"] == execution]
        assert [r["errorCode"] for r in published] == [code], (kind, stack.results[told["planId"]])


async def test_a_plan_started_under_another_workflow_id_never_runs(stack):
    """Issue 20: the workflow never checked that its id is plan-<planId>, so a client could run a plan
    id twice (under two ids) or pre-empt it. Refused, told under the execution's own id, nothing sent."""
    plan = stack.plan("rpc", wallet=2)
    execution = f"not-{plan['planId']}"
    handle = await stack.temporal.start_workflow("ExecutePlan", plan, id=execution, task_queue=stack.config.temporal_task_queue)
    told = await asyncio.wait_for(handle.result(), 20)
    assert (told["status"], told["errorCode"]) == ("failed", "INVALID_PLAN"), told
    assert "runs only as plan-" in told["error"] and told["planId"] == execution
    assert await stack.wire_transactions(plan["planId"]) == []
    assert plan["planId"] not in stack.results, "the plan's own id is left free to run and be told"
    alive = await stack.execute(plan)  # the same plan, as the bridge starts it
    assert alive["status"] == "success", alive
