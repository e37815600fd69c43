"""A plan's way to the wire is one table (executor/wire_state.py), and the executor's domain errors
meet Temporal's in one place (activities/execution.py). Server-less: the table and the activity edge
are checked as they are, the edge through Temporal's own ActivityEnvironment."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.execution import ExecutionActivities
from executor.errors import GateRefusal, PlanFailure, fail
from executor.wire_state import IllegalStep, Left, Sender, Step, WireState
from workflows.events import ErrorCode

S = WireState

# Every allowed step, as the module's docstring draws it; anything else must raise.
ALLOWED = {
    (S.PREPARING, Step.RECORDED_HERE): S.UNSENT,
    (S.PREPARING, Step.FOUND_RECORD): S.FOUND,
    (S.PREPARING, Step.VOIDED): S.VOID,
    (S.UNSENT, Step.VOIDED): S.VOID,
    (S.FOUND, Step.VOIDED): S.VOID,
    (S.FOUND, Step.CLAIMED): S.MAYBE_OUT,
    (S.UNSENT, Step.SEND): S.SENDING,
    (S.MAYBE_OUT, Step.SEND): S.RESENDING,
    (S.SENDING, Step.NOTHING_LEFT): S.UNSENT,
    (S.RESENDING, Step.NOTHING_LEFT): S.MAYBE_OUT,
    (S.SENDING, Step.MAY_BE_OUT): S.MAYBE_OUT,
    (S.RESENDING, Step.MAY_BE_OUT): S.MAYBE_OUT,
    (S.UNSENT, Step.WITHHELD): S.WITHHELD,
    (S.FOUND, Step.WITHHELD): S.WITHHELD,
    (S.MAYBE_OUT, Step.WITHHELD): S.WITHHELD,
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("step", list(Step))
def test_every_step_is_the_tables_or_raises(state, step):
    expected = ALLOWED.get((state, step))
    if expected is None:
        with pytest.raises(IllegalStep):
            state.then(step)
    else:
        assert state.then(step) is expected


def test_someone_elses_record_is_claimed_before_it_is_sent_and_never_voided():
    with pytest.raises(IllegalStep):
        S.FOUND.then(Step.SEND)
    for state in (S.MAYBE_OUT, S.SENDING, S.RESENDING, S.WITHHELD):
        with pytest.raises(IllegalStep):
            state.then(Step.VOIDED)  # it may be out: only what this dispatch recorded and never sent is voided


def test_the_walks_a_dispatch_takes():
    """Its own transaction sent; a rate limit then a send; a refusal of its own (void) and of a found one (withheld)."""

    def walk(state, *steps):
        for step in steps:
            state = state.then(step)
        return state

    assert walk(S.PREPARING, Step.RECORDED_HERE, Step.SEND, Step.MAY_BE_OUT) is S.MAYBE_OUT
    assert walk(S.PREPARING, Step.RECORDED_HERE, Step.SEND, Step.NOTHING_LEFT, Step.SEND, Step.MAY_BE_OUT) is S.MAYBE_OUT
    assert walk(S.PREPARING, Step.RECORDED_HERE, Step.SEND, Step.NOTHING_LEFT, Step.VOIDED) is S.VOID
    assert walk(S.PREPARING, Step.FOUND_RECORD, Step.CLAIMED, Step.SEND, Step.NOTHING_LEFT, Step.WITHHELD) is S.WITHHELD
    assert walk(S.PREPARING, Step.FOUND_RECORD, Step.WITHHELD) is S.WITHHELD


ANSWERS = {
    S.PREPARING: (Left.NOT_KNOWN, Sender.NOT_KNOWN),
    S.UNSENT: (Left.NO, Sender.THIS_DISPATCH),
    S.FOUND: (Left.MAYBE, Sender.THIS_DISPATCH_ONCE_CLAIMED),
    S.SENDING: (Left.MAYBE, Sender.SENDING_NOW),
    S.RESENDING: (Left.MAYBE, Sender.SENDING_NOW),
    S.MAYBE_OUT: (Left.MAYBE, Sender.THIS_DISPATCH),
    S.WITHHELD: (Left.MAYBE, Sender.A_RUN_THAT_CLAIMS_IT),
    S.VOID: (Left.NO, Sender.NOBODY),
}


@pytest.mark.parametrize("state", list(S))
def test_has_it_left_and_who_may_send_it(state):
    assert (state.left, state.sender) == ANSWERS[state]
    assert state.prepared == (state in (S.UNSENT, S.FOUND))


# --- the activity edge ----------------------------------------------------------------------------


def _raised(*args, **kwargs) -> PlanFailure:
    try:
        fail(*args, **kwargs)
    except PlanFailure as failure:
        return failure
    raise AssertionError("fail() returned")


def _refused(refusal: GateRefusal) -> PlanFailure:
    try:
        refusal.fail()
    except PlanFailure as failure:
        return failure
    raise AssertionError("GateRefusal.fail() returned")


class _Dispatcher:
    """Only what ExecutionActivities.execute reaches: a claim that fails the plan."""

    submitter = None

    def __init__(self, failure: PlanFailure) -> None:
        self.failure = failure

    async def claim(self, plan, halt_reason):
        raise self.failure


@pytest.mark.parametrize(
    "failure, non_retryable",
    [
        (_raised(ErrorCode.RATE_LIMITED, "RPC rate limited (HTTP 429)"), False),
        (_raised(ErrorCode.NO_WALLET, "every wallet is busy"), False),
        (_raised(ErrorCode.NO_WALLET, "no key for wallet X", final=True), True),  # a wallet no key store holds
        (_raised(ErrorCode.POLICY_VIOLATION, "policy rule tip_account"), True),
        (_raised(ErrorCode.SUBMIT_REJECTED, "RPC refused the transaction"), True),
        (_refused(GateRefusal(ErrorCode.HALTED, "halted before submit: operator", final=True)), True),
        (_refused(GateRefusal(ErrorCode.HALTED, "not sent while the kill switch is unheard", final=False)), False),
        (_refused(GateRefusal(ErrorCode.DEADLINE_EXCEEDED, "plan deadline passed", final=True)), True),
    ],
)
async def test_a_plan_failure_leaves_the_activity_as_temporals_application_error(failure, non_retryable):
    activities = ExecutionActivities(dispatcher=_Dispatcher(failure), rpc=None, wallets=None, records=None, watcher=None, js=None)
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.execute, SimpleNamespace(plan=None, halt_reason=None))
    error = raised.value
    assert (error.type, error.message, error.non_retryable) == (failure.code.value, failure.message, non_retryable)
    assert error.__cause__ is None, "the workflow sees the failure fail() used to raise, with no cause attached"


def test_every_activity_body_is_behind_the_edge():
    activities = ExecutionActivities.__new__(ExecutionActivities)  # all() only lists bound methods
    for method in activities.all():
        assert getattr(method, "__wrapped__", None) is not None, f"{method.__name__}: a PlanFailure would leave it untranslated"
