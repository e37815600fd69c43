"""ExecutePlan end to end on the real stack: plans in on PLANNED, transactions on the local
cluster, exactly one result out on EXECUTED."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta

import pytest
from solders.signature import Signature
from temporalio.client import WorkflowExecutionStatus

from venue.jito import STATIC_TIP_ACCOUNTS
from tests.stack import wait_until
from worker.bridge import workflow_id
from workflows.events import NATIVE_MINT, parse_plan
from chaos.plans import memo_plan
from devtools.demo import validate


async def test_rpc_plan_lands_once_and_moves_the_tokens(stack):
    plan = stack.plan("rpc", wallet=1)
    wallet = plan["wallet"]
    paid_before = await stack.token_balance(wallet, stack.pool.mint_in)
    received_before = await stack.token_balance(wallet, stack.pool.mint_out)
    sent_ahead = stack.worker.bridge.sent_ahead

    result = await stack.execute(plan)

    assert result["status"] == "success", result
    assert stack.worker.bridge.sent_ahead == sent_ahead + 1, "eager start: the bridge sent right after it"
    assert result["executionMethod"] == "rpc" and result["wallet"] == wallet
    assert result["blockSlot"] > 0 and result["confirmationTime"] >= plan["timestamp"]
    assert await stack.token_balance(wallet, stack.pool.mint_in) == paid_before - plan["inputAmount"]
    assert await stack.token_balance(wallet, stack.pool.mint_out) == received_before + plan["routes"][0]["outAmount"]
    assert result["executionCost"]["feeLamports"] > 0 and result["executionCost"]["tipLamports"] == 0
    # From the real balance changes: 1.01 B received for 1.0 A paid, both at the plan's $5 a token.
    assert result["actualProfit"] == pytest.approx(plan["expectedProfit"]) == pytest.approx(1.01 * 5 - 1.0 * 5)
    assert result["netProfit"] == pytest.approx(result["actualProfit"] - result["executionCost"]["usd"])  # the fee counted once
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    assert [row["timesReceived"] for row in await stack.wire_transactions(plan["planId"])] == [1]
    stages = result["stageTimings"]
    assert all(stages[s] is not None for s in ("lease", "build", "sign", "submit", "confirm"))


async def test_jito_bundle_plan_lands_and_pays_its_tip(stack):
    plan = stack.plan("jito_bundle", wallet=2, token_price_usd=None)
    result = await stack.execute(plan)

    assert result["status"] == "success", result
    assert result["bundleId"] and len(result["bundleId"]) == 64
    assert "actualProfit" not in result and "netProfit" not in result, "tokens moved and the plan gave no price: unknown, not wrong"
    tip = result["tipLamports"]
    assert tip >= stack.config.jito_tip_base and result["executionCost"]["tipLamports"] == tip
    tx = (await stack.rpc.get_transaction(Signature.from_string(result["signature"]), max_supported_transaction_version=0)).value
    keys = [str(k) for k in tx.transaction.transaction.message.account_keys]
    meta = tx.transaction.meta
    tips_received = {k: meta.post_balances[i] - meta.pre_balances[i] for i, k in enumerate(keys) if k in STATIC_TIP_ACCOUNTS}
    assert list(tips_received.values()) == [tip], "exactly one tip account, paid the result's tip"
    assert await stack.token_balance(plan["wallet"], stack.pool.mint_out) > 0
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]


async def test_a_memo_only_sol_plan_reports_its_fee_and_tip_as_the_cost_not_as_a_loss(stack):
    """Issue 20's reproduction: SOL in and out, inAmount 1, outAmount 2, expectedProfit 1.0. It reported
    actualProfit -5200.0; nothing moved but the fee and the tip, so the trade gained 0 and the net is their cost."""
    plan = memo_plan(stack.pool, f"t-{uuid.uuid4().hex[:12]}", "jito_bundle", max_latency_ms=20_000, now_ms=int(time.time() * 1000))
    del plan["inputTokenPriceUsd"], plan["outputTokenPriceUsd"]  # SOL has one price: solPriceUsd
    plan |= {"inputToken": NATIVE_MINT, "outputToken": NATIVE_MINT, "inputAmount": 1, "expectedProfit": 1.0, "solPriceUsd": 150.0}
    plan["routes"][0] |= {"inputMint": NATIVE_MINT, "outputMint": NATIVE_MINT, "inAmount": 1, "outAmount": 2}
    result = await stack.execute(plan)

    assert result["status"] == "success", result
    cost = result["executionCost"]
    assert cost["tipLamports"] > 0 and cost["usd"] == pytest.approx(cost["totalLamports"] / 1e9 * 150)
    assert result["actualProfit"] == 0.0
    assert result["netProfit"] == pytest.approx(-cost["usd"])


async def test_same_plan_published_five_times_runs_once_with_one_result(stack):
    plan = stack.plan("rpc", wallet=3)
    for _ in range(5):
        await stack.publish(plan)
    result = await stack.result(plan["planId"])
    assert result["status"] == "success", result
    await asyncio.sleep(1.0)  # time for any duplicate to surface
    assert len(stack.results[plan["planId"]]) == 1
    runs = await stack.temporal.count_workflows(f'WorkflowId = "{workflow_id(plan["planId"])}"')
    assert runs.count == 1
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    # ...and published again after it finished: still nothing new (the id is never reused)
    await stack.publish(plan)
    await asyncio.sleep(1.0)
    assert len(stack.results[plan["planId"]]) == 1
    assert (await stack.temporal.count_workflows(f'WorkflowId = "{workflow_id(plan["planId"])}"')).count == 1
    # The bridge leases a wallet for every plan while its start is in flight; a duplicate's lease is given back.
    assert await stack.lease_holders(plan["planId"]) == []


async def test_a_preparation_no_workflow_claims_gives_its_wallet_back(stack):
    """Work prepared during a start whose workflow task went elsewhere (or never reached execute)
    must not hold a wallet: it is undone by the plan's deadline + 1 s, or at once when forgotten."""
    dispatcher = stack.worker.dispatcher
    soon = parse_plan(json.dumps(stack.plan("rpc", wallet=2, deadline_ms=300)).encode())
    dispatcher.open_ahead(soon)
    await wait_until(lambda: stack.lease_holders(soon.plan_id), timeout=5)  # leased ahead...
    await wait_until(lambda: _released(stack, soon.plan_id), timeout=5)  # ...and given back after its deadline

    later = parse_plan(json.dumps(stack.plan("rpc", wallet=2, deadline_ms=20_000)).encode())
    dispatcher.abandon(dispatcher.open_ahead(later))  # as the bridge does when the start fails
    await asyncio.sleep(0.3)
    assert await stack.lease_holders(later.plan_id) == []
    assert await stack.wire_transactions(soon.plan_id) == [] and await stack.wire_transactions(later.plan_id) == []


async def test_a_duplicate_delivery_does_not_give_back_the_running_plans_lease(stack):
    """The lease id is the plan id, so a duplicate delivery's dispatch finds the running plan's
    lease. Before issue 20 the bridge then abandoned that dispatch (WorkflowAlreadyStarted) and
    released the lease while the plan was still sending or confirming: its wallet looked free."""
    dispatcher = stack.worker.dispatcher
    plan = stack.plan("rpc", wallet=1)
    event = validate(plan)
    executed = await dispatcher.claim(event, None)  # the running plan: leased, recorded, sent; its workflow would now confirm
    try:
        assert await stack.lease_holders(plan["planId"]) == [executed.lease.wallet]
        duplicate = dispatcher.open_ahead(event)  # the same plan delivered again, as the bridge takes it
        assert duplicate is not None
        await asyncio.gather(duplicate.prepared, return_exceptions=True)
        dispatcher.abandon(duplicate)  # as the bridge does on WorkflowAlreadyStarted
        await asyncio.sleep(0.5)
        assert await stack.lease_holders(plan["planId"]) == [executed.lease.wallet], "the running plan keeps its wallet"
        assert duplicate.lease_taken is False
    finally:
        await stack.worker.wallets.release(plan["planId"], executed.lease.wallet, "none")


async def _released(stack, lease_id: str) -> bool:
    return not await stack.lease_holders(lease_id)


async def test_a_transaction_sent_ahead_is_claimed_by_its_workflow_not_sent_again(stack):
    """What the bridge does after an eager start, done by hand: the workflow (started without
    the bridge, so its task comes from the server's queue) finds the send done and follows it."""
    dispatcher = stack.worker.dispatcher
    plan = stack.plan("rpc", wallet=3)
    event = validate(plan)
    dispatcher.open_ahead(event).send_ahead()
    await wait_until(lambda: stack.wire_transactions(plan["planId"]), timeout=10)
    await stack.temporal.start_workflow("ExecutePlan", event, id=workflow_id(plan["planId"]), task_queue=stack.config.temporal_task_queue)
    result = await stack.result(plan["planId"])
    assert result["status"] == "success", result
    on_wire = await stack.wire_transactions(plan["planId"])
    assert [(row["signature"], row["timesReceived"]) for row in on_wire] == [(result["signature"], 1)]
    assert await stack.lease_holders(plan["planId"]) == []


async def test_halt_before_the_send_ahead_sends_nothing_and_the_workflow_reports_it(stack):
    dispatcher = stack.worker.dispatcher
    plan = stack.plan("rpc", wallet=4)
    event = validate(plan)
    ahead = dispatcher.open_ahead(event)
    await stack.halt("test: halted while the start was in flight")
    await wait_until(lambda: _async(stack.worker.killswitch.halted() is not None))
    try:
        ahead.send_ahead()
        await stack.temporal.start_workflow("ExecutePlan", event, id=workflow_id(plan["planId"]), task_queue=stack.config.temporal_task_queue)
        result = await stack.result(plan["planId"])
    finally:
        await stack.resume()
    assert result["status"] == "failed" and result["errorCode"] == "HALTED", result
    assert await stack.wire_transactions(plan["planId"]) == []
    assert await stack.lease_holders(plan["planId"]) == []


async def test_plan_past_its_deadline_times_out_and_sends_nothing(stack):
    plan = stack.plan("rpc", wallet=4, deadline_ms=-1_000)
    result = await stack.execute(plan)
    assert result["status"] == "timeout"
    assert result["errorCode"] == "DEADLINE_EXCEEDED"
    assert result.get("signature") is None
    assert await stack.wire_transactions(plan["planId"]) == []


async def test_kill_switch_holds_new_plans_and_stops_workflows_before_submit(stack):
    await stack.halt("test: market closed")
    await wait_until(lambda: _async(stack.worker.killswitch.halted() is not None))
    try:
        waiting = stack.plan("rpc", wallet=5)
        await stack.publish(waiting)
        await asyncio.sleep(1.0)
        assert waiting["planId"] not in stack.results, "the bridge takes nothing while halted"

        # A workflow started elsewhere (not through this bridge) still never submits.
        direct = stack.plan("rpc", wallet=5)
        await stack.temporal.start_workflow(
            "ExecutePlan", validate(direct), id=workflow_id(direct["planId"]), task_queue=stack.config.temporal_task_queue
        )
        halted = await stack.result(direct["planId"])
        assert halted["status"] == "failed" and halted["errorCode"] == "HALTED", halted
        assert "market closed" in halted["error"]
        assert await stack.wire_transactions(direct["planId"]) == []
    finally:
        await stack.resume()
    resumed = await stack.result(waiting["planId"])
    assert resumed["status"] == "success", resumed


async def test_halt_signal_to_one_workflow_stops_it_before_submit(stack):
    """What the Temporal UI's or `temporal workflow signal`'s halt does to one plan."""
    plan = stack.plan("rpc", wallet=0)
    handle = await stack.temporal.start_workflow(
        "ExecutePlan",
        validate(plan),
        id=workflow_id(plan["planId"]),
        task_queue=stack.config.temporal_task_queue,
        start_delay=timedelta(seconds=3),  # the signal arrives before its first step
    )
    await handle.signal("halt", "operator pressed halt in the UI")
    result = await stack.result(plan["planId"])
    assert result["status"] == "failed" and result["errorCode"] == "HALTED", result
    assert await stack.wire_transactions(plan["planId"]) == []
    assert (await handle.result())["status"] == "failed"
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED  # ended cleanly, not as a failed workflow


async def test_halt_signal_while_submit_runs_still_one_transaction(stack):
    """A signal cannot stop a running local activity, and makes its workflow task re-run:
    the re-run must resend the recorded bytes, never sign a second transaction."""
    plan = stack.plan("rpc", wallet=1)
    await stack.faults({"rpc": {"delay_ms": 1500}})
    try:
        await stack.publish(plan)
        handle = stack.temporal.get_workflow_handle(workflow_id(plan["planId"]))
        await wait_until(lambda: _started(handle), timeout=10)
        await asyncio.sleep(0.4)  # well inside the 1.5 s sendTransaction
        await handle.signal("halt", "halt during submit")
        result = await stack.result(plan["planId"], timeout=40)
    finally:
        await stack.clear_faults()
    on_wire = await stack.wire_transactions(plan["planId"])
    assert len(on_wire) == 1, on_wire
    assert result["signature"] == on_wire[0]["signature"]
    assert result["status"] == "success", "sent before the halt: followed to its true outcome"
    assert len(stack.results[plan["planId"]]) == 1


async def test_dropped_bundle_ends_blockhash_expired_without_a_second_signature(stack):
    plan = stack.plan("jito_bundle", wallet=2, max_latency_ms=60_000)
    await stack.faults({"bundle": {"drop": 1.0}})
    try:
        result = await stack.execute(plan, timeout=40)
    finally:
        await stack.clear_faults()
    assert result["status"] == "timeout" and result["errorCode"] == "BLOCKHASH_EXPIRED", result
    on_wire = await stack.wire_transactions(plan["planId"])
    assert [row["signature"] for row in on_wire] == [result["signature"]] and on_wire[0]["landedSlot"] is None


async def _started(handle) -> bool:
    try:
        await handle.describe()
        return True
    except Exception:
        return False


async def _async(value):
    return value


def _json(value) -> str:
    return json.dumps(value)


@pytest.mark.parametrize(("method", "channel"), [("rpc", "rpc"), ("jito_bundle", "bundle")])
async def test_rate_limited_submit_backs_off_and_lands_once(stack, method, channel):
    """HTTP 429 from the RPC or the block engine is transient: submit retries the same bytes."""
    plan = stack.plan(method, wallet=4)
    await stack.faults({channel: {"rate_limit": 1.0}})
    try:
        await stack.publish(plan)
        await asyncio.sleep(0.8)
        assert plan["planId"] not in stack.results, "still retrying while every request gets 429"
    finally:
        await stack.clear_faults()
    result = await stack.result(plan["planId"])
    assert result["status"] == "success", result
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]


async def test_recorded_histories_replay_deterministically(stack):
    """Every history this session produced (success, halted, expired, signalled) replays with
    today's workflow code: a non-deterministic change would fail here, not in production.
    The histories are encrypted, so the Replayer gets the worker's converter, codec included."""
    from temporalio.worker import Replayer

    from workflows.codec import ENCODING
    from workflows.execute_plan import ExecutePlan

    plan = stack.plan("rpc", wallet=5)
    await stack.execute(plan)
    # This worker's task queue: the key-rotation test runs one plan on a queue of its own, under a
    # key this session's worker never had.
    query = f'WorkflowType = "ExecutePlan" AND ExecutionStatus = "Completed" AND TaskQueue = "{stack.config.temporal_task_queue}"'
    histories = [await stack.temporal.get_workflow_handle(e.id, run_id=e.run_id).fetch_history() async for e in stack.temporal.list_workflows(query)]
    assert len(histories) >= 1
    # Whatever ran before in this session replays too, whatever order the modules ran in: starts made
    # on purpose with no input or in plain text (test_malformed_plans, test_temporal_security) included.
    # What the bridge started is ciphertext, as production's histories are.
    ours = await stack.temporal.get_workflow_handle(workflow_id(plan["planId"])).fetch_history()  # visibility may lag the list
    histories = [h for h in histories if h.workflow_id != ours.workflow_id] + [ours]
    assert ours.events[0].workflow_execution_started_event_attributes.input.payloads[0].metadata["encoding"] == ENCODING, "the replay reads ciphertext, as production would"
    replayer = Replayer(workflows=[ExecutePlan], data_converter=stack.temporal.data_converter)
    async with replayer.workflow_replay_iterator(_iterate(histories)) as results:
        async for outcome in results:
            assert outcome.replay_failure is None, outcome.replay_failure


async def _iterate(items):
    for item in items:
        yield item


async def test_tpu_direct_plan_lands_once(stack):
    plan = stack.plan("tpu_direct", wallet=0)
    result = await stack.execute(plan)
    assert result["status"] == "success", result
    assert result["executionMethod"] == "tpu_direct"
    assert not result.get("tipLamports"), "no tip without Jito"
    on_wire = await stack.wire_transactions(plan["planId"])
    assert [row["signature"] for row in on_wire] == [result["signature"]]
    assert on_wire[0]["channels"] == ["tpu"], "straight to the leaders, no RPC hop"
    await asyncio.sleep(0.5)
    assert len(stack.results[plan["planId"]]) == 1


async def test_tpu_direct_lands_by_rebroadcast_when_leaders_drop_half(stack):
    plan = stack.plan("tpu_direct", wallet=1, max_latency_ms=30_000)
    await stack.faults({"tpu": {"drop": 0.5}, "seed": 3})
    try:
        result = await stack.execute(plan, timeout=30)
    finally:
        await stack.clear_faults()
    assert result["status"] == "success", result
    on_wire = await stack.wire_transactions(plan["planId"])
    assert [row["signature"] for row in on_wire] == [result["signature"]], "resent, never re-signed"
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
