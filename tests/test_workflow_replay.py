"""Plans in flight during an upgrade still replay: histories written by earlier workflow code, replayed
on today's, without a server.

tests/histories/<commit>/ holds histories recorded (tests/workflow_tier.py `record`) with the workflow of
that commit, encrypted with the tier's public test key: a plain plan, one whose confirm continued as new
(its two runs: the first started with [plan], the second with [plan, following]), one halted by a signal
before its first task, and a rejected input. A worker replays a history whenever its workflow task moves
to a worker without the run in cache (a restart, an upgrade): a workflow change that cannot read one of
them, or that issues other commands than those recorded, fails here rather than strands a plan that is
on the wire. Recorded with the SHORT waits (fewer events before the follow-on), so replayed with them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from tests.workflow_tier import CONVERTER, HISTORIES, shortened
from workflows.execute_plan import ExecutePlan

RECORDED = sorted(HISTORIES.glob("*/*.json"))


def _history(path: Path) -> WorkflowHistory:
    """Under the workflow id it was recorded with (the workflow checks that it runs as plan-<planId>)."""
    return WorkflowHistory.from_json(f"plan-recorded-{path.stem.rsplit('-run', 1)[0]}", path.read_text())


def test_the_fixtures_cover_each_shape_of_input_a_plan_in_flight_can_have():
    shapes = {(path.parent.name, path.stem) for path in RECORDED}
    first_commit = sorted({commit for commit, _ in shapes})[0]
    assert {stem for commit, stem in shapes if commit == first_commit} >= {"plain-run1", "continued-run1", "continued-run2", "halted-run1", "rejected-run1"}
    started = {
        path.stem: len(_history(path).events[0].workflow_execution_started_event_attributes.input.payloads) for path in RECORDED if path.parent.name == first_commit
    }
    assert started["plain-run1"] == 1 and started["continued-run2"] == 2, "started with [plan], continued as new with [plan, following]"


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: f"{path.parent.name}/{path.stem}")
async def test_a_recorded_history_replays_on_todays_workflow(path):
    history = _history(path)
    assert history.events[0].workflow_execution_started_event_attributes.input.payloads[0].metadata["encoding"] == b"binary/encrypted"
    replayer = Replayer(workflows=[ExecutePlan], data_converter=CONVERTER, workflow_runner=UnsandboxedWorkflowRunner())
    with shortened():
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path}: {result.replay_failure!r}"
