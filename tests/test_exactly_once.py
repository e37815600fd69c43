"""The exactly-once promise at the seams the chaos campaign found: the send gate's fencing on the
record, copies that must not go out, sends slower than the deadline, the kill switch during
rebroadcasts, halt signals of any form, plan ids that already have a result, and rejections
that must not hide a real result. On the session stack (real Temporal, NATS, local cluster)."""
from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from temporalio.service import RPCError

from executor.dispatch import Dispatch
from executor.errors import PlanFailure
from executor.wire_state import WireState
from venue.rpc import SolanaRpc
from executor.submit import Submitter
from executor.wallets import now_ms
from tests.http_endpoint import http_endpoint
from tests.stack import wait_until
from worker.bridge import DURABLE, workflow_id
from devtools.demo import validate
from workflows.events import ErrorCode, ExecutionCost, ExecutionResultEvent, ExecutionStatus
from workflows.stages import PublishRequest


async def _is(value):
    return value


# --- the record fences the send gate -----------------------------------------------------------


async def test_a_refusal_says_nothing_sent_only_if_no_other_run_claimed_the_transaction(stack):
    """A run refuses its own fresh transaction (a halt): it may say "nothing sent" only by voiding
    the record. If another run (a re-run on another worker) claimed it first to resend it, the
    refusal only withholds it, and the plan is followed on chain."""
    dispatcher, records = stack.worker.dispatcher, stack.worker.records
    claimed = validate(stack.plan("rpc", wallet=0))
    mine = Dispatch(claimed, dispatcher)
    await mine.prepared
    assert mine.state is WireState.UNSENT  # this run recorded it: nothing of it is out
    other_run = await records.claim(await records.read(claimed.plan_id))
    submission = await mine.send("halted by the operator")
    assert submission.withheld_code == "HALTED", "a claimed transaction may be out: followed, not called unsent"
    assert not (await records.read(claimed.plan_id)).void and other_run.signed.signature == submission.signature

    voided = validate(stack.plan("rpc", wallet=0))
    first = Dispatch(voided, dispatcher)
    await first.prepared
    with pytest.raises(PlanFailure) as refused:
        await first.send("halted by the operator")
    assert refused.value.code is ErrorCode.HALTED
    assert (await records.read(voided.plan_id)).void
    late = Dispatch(voided, dispatcher)  # a re-run after the void: nothing to claim, nothing to send
    with pytest.raises(PlanFailure) as ended:
        await late.prepared
    assert ended.value.code is ErrorCode.HALTED and not ended.value.retryable
    for plan in (claimed, voided):
        await dispatcher.wallets.release(plan.plan_id, None, "none")
    assert await stack.wire_transactions(claimed.plan_id) == [] and await stack.wire_transactions(voided.plan_id) == []


# --- what goes on the wire -----------------------------------------------------------------------


@pytest.fixture
async def refusing_rpc():
    """An RPC node that refuses every transaction (a definite JSON-RPC error)."""

    async def refuse(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "error": {"code": -32002, "message": "Transaction simulation failed"}})

    async with http_endpoint("/", refuse) as url:
        yield url + "/"


async def test_no_backup_copy_goes_out_when_the_primary_refuses(stack, refusing_rpc):
    """RPC_BACKUPS get a copy only of what the primary did not refuse: SUBMIT_REJECTED must mean
    nothing left, or a backup could land the plan a result calls rejected."""
    plan = validate(stack.plan("rpc", wallet=1))
    dispatch = Dispatch(plan, stack.worker.dispatcher, durable=False)
    await dispatch.prepared
    primary, backup = SolanaRpc(refusing_rpc), SolanaRpc(stack.endpoints["rpc"])
    submitter = Submitter(primary, stack.worker.jito, lambda: None, backups=[backup])
    try:
        with pytest.raises(PlanFailure) as refused:
            await submitter.submit("rpc", dispatch.signed)
        assert refused.value.code is ErrorCode.SUBMIT_REJECTED
        await asyncio.sleep(0.5)
        assert await stack.wire_transactions(plan.plan_id) == []
    finally:
        await stack.worker.wallets.release(plan.plan_id, None, "none")
        await primary.close()
        await backup.close()


async def test_a_send_slower_than_the_deadline_is_followed_and_its_lease_given_back(stack):
    """The send takes longer than the plan has left: it is not cut mid-POST and called unsent, it is
    followed to its landing; and the wallet's lease comes back."""
    plan = stack.plan("rpc", wallet=2, deadline_ms=400, max_latency_ms=400)
    await stack.faults({"rpc": {"delay_ms": 1500}})
    try:
        result = await stack.execute(plan, timeout=30)
    finally:
        await stack.clear_faults()
    assert result["status"] == "success", result
    assert await stack.landed_for(plan["planId"]) == [result["signature"]]
    assert await stack.lease_holders(plan["planId"]) == []


async def test_no_copy_goes_out_while_the_kill_switch_is_on(stack):
    """Rebroadcasts of a transaction the cluster never took stop at a halt, and start again after it."""
    plan = stack.plan("rpc", wallet=3, deadline_ms=30_000, max_latency_ms=30_000)
    await stack.faults({"rpc": {"drop": 1.0}})
    try:
        await stack.publish(plan)

        async def received(at_least: int) -> bool:
            rows = await stack.wire_transactions(plan["planId"])
            return bool(rows) and rows[0]["timesReceived"] >= at_least

        await wait_until(lambda: received(2), timeout=10)
        await stack.halt("test: halt during rebroadcasts")
        await wait_until(lambda: _is(stack.worker.killswitch.halted() is not None))
        await asyncio.sleep(0.2)
        times = (await stack.wire_transactions(plan["planId"]))[0]["timesReceived"]
        await asyncio.sleep(2.5)  # more than two rebroadcast intervals
        assert (await stack.wire_transactions(plan["planId"]))[0]["timesReceived"] == times, "a copy went out while halted"
    finally:
        await stack.resume()
        await stack.clear_faults()
    result = await stack.result(plan["planId"], timeout=30)
    assert result["status"] == "success", result


# --- inputs a workflow can receive --------------------------------------------------------------


@pytest.mark.parametrize("given", [[], [None], [123], [{"why": "risk"}]], ids=["no input", "null", "a number", "an object"])
async def test_a_halt_signal_of_any_form_halts_and_never_sticks_the_workflow(stack, given):
    plan = stack.plan("rpc", wallet=4)
    handle = await stack.temporal.start_workflow(
        "ExecutePlan", validate(plan), id=workflow_id(plan["planId"]), task_queue=stack.config.temporal_task_queue,
        start_signal="halt", start_signal_args=given,
    )  # fmt: skip
    told = await asyncio.wait_for(handle.result(), 20)
    assert (told["status"], told["errorCode"]) == ("failed", "HALTED"), told
    assert await stack.wire_transactions(plan["planId"]) == []


async def test_a_cancel_request_is_a_halt_and_the_plan_still_gets_its_one_result(stack):
    """Issue 20: a cancel (the UI's, or `temporal workflow cancel`) ended the workflow with no result,
    while its transaction could be out. It is obeyed as a halt: nothing unsent goes out, one result."""
    from datetime import timedelta

    from temporalio.client import WorkflowExecutionStatus

    plan = stack.plan("rpc", wallet=4)
    handle = await stack.temporal.start_workflow(
        "ExecutePlan", validate(plan), id=workflow_id(plan["planId"]), task_queue=stack.config.temporal_task_queue,
        start_delay=timedelta(seconds=3),
    )  # fmt: skip
    await handle.cancel()
    told = await asyncio.wait_for(handle.result(), 20)
    assert (told["status"], told["errorCode"]) == ("failed", "HALTED"), told
    assert "cancelled" in told["error"]
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert await stack.wire_transactions(plan["planId"]) == []
    await stack.result(plan["planId"], timeout=10)
    assert len(stack.results[plan["planId"]]) == 1


async def test_a_cancel_after_the_send_follows_the_transaction_to_its_landing(stack):
    plan = stack.plan("rpc", wallet=5)
    await stack.publish(plan)
    await wait_until(lambda: stack.wire_transactions(plan["planId"]), timeout=15)
    await stack.temporal.get_workflow_handle(workflow_id(plan["planId"])).cancel()
    told = await stack.result(plan["planId"], timeout=30)
    assert told["status"] == "success", told  # it was out: the chain's answer, not "cancelled"
    assert await stack.landed_for(plan["planId"]) == [told["signature"]]


# --- a plan id runs once, ever ------------------------------------------------------------------


async def test_a_plan_id_with_a_stored_result_never_runs_again(stack):
    """Temporal forgets a closed workflow after its retention (72 h); PLANNED can redeliver the plan
    for 7 days (a consumer recreated after a config change replays it). Here the plan ran long
    ago: its result is stored, Temporal no longer knows its workflow. It must not run again."""
    plan = stack.plan("rpc", wallet=5)
    long_ago = ExecutionResultEvent(
        execution_id=workflow_id(plan["planId"]), plan_id=plan["planId"], opportunity_id=plan["opportunityId"], status=ExecutionStatus.success,
        expected_profit=0.05, execution_cost=ExecutionCost(), latency=12.0, execution_method="rpc", timestamp=now_ms() - 4 * 24 * 3600 * 1000,
    )  # fmt: skip
    await stack.worker.records.keep_result(long_ago)
    await stack.publish(plan)
    await asyncio.sleep(1.5)
    with pytest.raises(RPCError):  # no workflow for it
        await stack.temporal.get_workflow_handle(workflow_id(plan["planId"])).describe()
    assert stack.publishes[plan["planId"]] == [], "a second result for a plan that already has one"
    assert await stack.wire_transactions(plan["planId"]) == [], "a plan that already ran was sent again"
    consumer = await stack.js.consumer_info("PLANNED", DURABLE)
    assert consumer.num_ack_pending == 0, "the replayed plan is settled, not left to come back"


async def test_a_rejected_message_never_hides_the_result_of_a_valid_plan_with_its_id(stack):
    plan = stack.plan("rpc", wallet=0)
    broken = {key: value for key, value in plan.items() if key != "routes"}
    await stack.publish(broken, subject="execution.planned.broken")
    rejected = await stack.result(plan["planId"])
    assert (rejected["status"], rejected["errorCode"]) == ("failed", "INVALID_PLAN")
    await stack.publish(plan)
    await wait_until(lambda: _is(len(stack.results[plan["planId"]]) == 2), timeout=20)
    assert stack.results[plan["planId"]][1]["status"] == "success", stack.results[plan["planId"]]


async def test_a_re_run_publishes_the_stored_result_not_its_own(stack):
    """One story: the first result stored for a plan is the one every later publish carries."""
    plan = stack.plan("rpc", wallet=1)
    now = now_ms()

    def result(status: ExecutionStatus, code: ErrorCode | None) -> ExecutionResultEvent:
        return ExecutionResultEvent(
            execution_id=workflow_id(plan["planId"]), plan_id=plan["planId"], opportunity_id=plan["opportunityId"], status=status,
            expected_profit=0.05, execution_cost=ExecutionCost(fee_lamports=5000), latency=1.0, execution_method="rpc", error_code=code, timestamp=now,
        )  # fmt: skip

    publish = stack.worker.activities.publish
    first = await publish(PublishRequest(result(ExecutionStatus.success, None), plan["planId"]))
    second = await publish(PublishRequest(result(ExecutionStatus.timeout, ErrorCode.BLOCKHASH_EXPIRED), plan["planId"]))
    assert first.status == second.status == ExecutionStatus.success
    await asyncio.sleep(0.3)
    assert [p["status"] for p in stack.publishes[plan["planId"]]] == ["success", "success"]
    assert json.loads((await stack.worker.records.result(plan["planId"])).to_wire())["status"] == "success"


async def test_a_halt_during_a_slow_claim_is_final_no_bytes_after_the_acknowledgment(stack, monkeypatch):
    """Issue 20: a re-run checked the send gate, awaited its KV claim, and only then counted the send.
    With the claim taking 200 ms: halt applied 51 ms, acknowledged 53 ms, sendTransaction on the wire
    202 ms. Now the gate is asked again in the step the bytes leave, so the halted send never leaves."""
    dispatcher, records, killswitch = stack.worker.dispatcher, stack.worker.records, stack.worker.killswitch
    plan = validate(stack.plan("rpc", wallet=3))
    writer = Dispatch(plan, dispatcher)  # another run recorded the transaction and died before sending it
    await writer.prepared
    rerun = Dispatch(plan, dispatcher)  # this run finds the record: it must claim it before resending
    await rerun.prepared
    claim = records.claim

    async def slow_claim(record):
        await asyncio.sleep(0.2)
        return await claim(record)

    monkeypatch.setattr(records, "claim", slow_claim)
    acked_at: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        sending = asyncio.create_task(rerun.send(None))
        await asyncio.sleep(0.05)
        await stack.halt("test: halt during a slow claim")
        await wait_until(lambda: _is(killswitch.halted() is not None), timeout=5, every=0.005)
        seq = killswitch.halt_seq

        async def acknowledged():
            if killswitch.acked_seq == seq and not acked_at:
                acked_at.append(loop.time())
            return bool(acked_at)

        submission = await sending
        sent_done = loop.time()
        await wait_until(acknowledged, timeout=10, every=0.005)
        assert submission.withheld_code == "HALTED", submission  # refused in the send's own step
        assert await stack.wire_transactions(plan.plan_id) == [], "bytes left after the halt"
        assert acked_at[0] >= sent_done - 0.01, "acknowledged while the send was still out"
    finally:
        await stack.resume()
        await stack.worker.wallets.release(plan.plan_id, writer.lease.wallet, "none")


async def test_backup_copies_hold_the_halt_acknowledgment_until_they_are_out(stack):
    """A copy to RPC_BACKUPS is a send: the drain the acknowledgment waits for counts it."""
    gate = asyncio.Event()

    class SlowBackup:
        shown = "slow-backup"

        async def send_transaction(self, raw: bytes) -> str:
            await gate.wait()
            return "sig"

    class Primary:
        async def send_transaction(self, raw: bytes) -> str:
            return "sig"

    submitter = Submitter(rpc=Primary(), jito=None, halted=lambda: None, backups=[SlowBackup()])
    await submitter.send("rpc", b"raw")
    drained = asyncio.create_task(submitter.drained())
    await asyncio.sleep(0.1)
    assert not drained.done() and submitter.in_flight == 1, "the copy still out counts"
    gate.set()
    await asyncio.wait_for(drained, 2)
    assert submitter.in_flight == 0
