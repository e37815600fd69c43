"""The workflow calls its activities through `workflows.plan_activities.PlanActivities`; the worker
registers `activities.execution.ExecutionActivities`. They must agree on every name and type,
or a plan's workflow task would fail at run time (an activity the worker does not have, or a
payload decoded as the wrong type)."""
from __future__ import annotations

import inspect
import typing

from temporalio import activity

from activities.execution import ExecutionActivities
from workflows.plan_activities import PlanActivities


def definitions(cls) -> dict[str, object]:
    found = {}
    for _, member in inspect.getmembers(cls, inspect.isfunction):
        definition = activity._Definition.from_callable(member)
        if definition is not None:
            found[definition.name] = member
    return found


def test_every_activity_the_workflow_calls_is_implemented_with_the_same_types():
    called, implemented = definitions(PlanActivities), definitions(ExecutionActivities)
    assert called, "the workflow calls no activity: PlanActivities lost its definitions"
    assert set(called) == set(implemented)
    for name, stub in called.items():
        implementation = implemented[name]
        assert implementation is not stub, f"{name}: not implemented (the interface's own stub is registered)"
        assert typing.get_type_hints(implementation) == typing.get_type_hints(stub), name


def test_the_worker_registers_every_activity_the_workflow_calls():
    activities = ExecutionActivities.__new__(ExecutionActivities)  # all() only lists bound methods
    registered = {activity._Definition.must_from_callable(method).name for method in activities.all()}
    assert registered == set(definitions(PlanActivities))
