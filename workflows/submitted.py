"""What one ExecutePlan run was started with, read once into a typed value: `SubmittedPlan`.

A run is started by the bridge (the plan's bytes, one JSON payload), by confirm's continue-as-new (the
plan and the `Following` of the transaction it follows), or by any client that reaches Temporal (the
UI, the CLI, an SDK), with anything: no input, three inputs, a string, a plan written without the
history keys. Whatever it is, the run must end in a result (a rejection with its code), never in a
workflow task that fails for ever. So the SDK's boundary (`ExecutePlan.run(self, *submitted)`) takes
any number of values, and this module turns them into one `SubmittedPlan`, for the workflow to read.

Why the boundary is not one typed parameter, as the Temporal Python samples write a run method (sdk-python
1.35): the SDK decodes with the run method's type hints only when the number of payloads
equals the number of parameters (temporalio/worker/_workflow_instance.py `_convert_payloads`: "Only use
type hints if they match count"), and a method with `*args` has no hints at all
(temporalio/common.py `_type_hints_from_func`). Called with another number of values than its
parameters, the run method raises TypeError before its first line, and the SDK fails the workflow task
and retries it for ever; a value that does not decode to a parameter's type does the same ("Failed
decoding arguments"). A typed parameter would also have to read both shapes of input that histories of
plans in flight hold: one value at the start, two after a continue-as-new.

The shapes on the wire are the ones every release wrote, and `follow_on` keeps writing them: [plan] at
the start, [plan, following] on continue-as-new. So histories written before this module replay on it
(tests/test_workflow_replay.py), and a run continued by a newer worker is read by an older one during a
rolling upgrade: no `workflow.patched` is needed, as no command changed and no input shape did.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import TypeAdapter

from workflows.converter import Unencrypted
from workflows.stages import Following

_FOLLOWING = TypeAdapter(Following)


@dataclass(frozen=True)
class SubmittedPlan:
    """The input of one run. `data`: the plan's JSON as given, for parse_plan to judge (b"" when the run
    was not given exactly one plan, which parse_plan refuses as INVALID_PLAN). `following`: set only on a
    run continued by confirm. `plain`: written in plain text by a client without the history keys while
    history encryption is on (workflows/codec.py): never run."""

    data: bytes
    following: Following | None = None
    plain: bool = False
    given: object = None  # the plan as decoded, written back as is on continue-as-new

    @classmethod
    def read(cls, submitted: Sequence[object], *, continued: bool) -> SubmittedPlan:
        """`continued`: this run was started by a continue-as-new (workflow.info().continued_run_id). A client
        cannot start a run as continued, so a second value from outside is refused like anything that is
        not one plan."""
        if any(isinstance(value, Unencrypted) for value in submitted):
            return cls(b"", plain=True)
        following = None
        if continued and len(submitted) == 2:
            following = _FOLLOWING.validate_json(json.dumps(submitted[1]))
        if len(submitted) != 1 and following is None:
            return cls(b"")
        return cls(_json(submitted[0]), following, given=submitted[0])

    def follow_on(self, following: Following) -> list[object]:
        """continue-as-new's arguments: the plan as this run was given it, and what the next run follows."""
        return [self.given, following]


def _json(value: object) -> bytes:
    """The JSON of a decoded value (the SDK decodes a JSON payload to dicts, lists and scalars). A bytes
    payload (binary/plain) is taken as the plan's JSON bytes; anything that is not JSON reads as no plan."""
    if isinstance(value, bytes):
        return value
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError):
        return b""
