"""What the ExecutePlan workflow asks of its activities: each one's name and types.

The workflow calls the activities through `PlanActivities`, by typed reference, and
`activities.execution.ExecutionActivities` implements them: so the workflow imports nothing of
the side that does the work, and the imports point one way. The data they pass is in
workflows/stages.py, apart from this, so that `executor/` can use it without temporalio.
"""
from __future__ import annotations

from temporalio import activity

from workflows.events import ExecutionResultEvent
from workflows.stages import (
    Confirmation,
    ConfirmRequest,
    Executed,
    ExecuteRequest,
    PublishRequest,
    ReleaseRequest,
    ResolveRequest,
    Settlement,
    SettleRequest,
    SignedTransaction,
)


class PlanActivities:
    """The activities of one plan, as the workflow calls them (each a local activity)."""

    @activity.defn(name="execute")
    async def execute(self, request: ExecuteRequest) -> Executed:
        """Lease, build, policy, sign, record, the send gate, the send."""
        raise NotImplementedError

    @activity.defn(name="resolve_record")
    async def resolve_record(self, request: ResolveRequest) -> SignedTransaction | None:
        """After a failed execute: None if the plan's record is void, else the recorded transaction."""
        raise NotImplementedError

    @activity.defn(name="confirm")
    async def confirm(self, request: ConfirmRequest) -> Confirmation:
        """Follow the recorded signature until the chain decides."""
        raise NotImplementedError

    @activity.defn(name="settle")
    async def settle(self, request: SettleRequest) -> Settlement:
        """What the landed transaction cost and earned."""
        raise NotImplementedError

    @activity.defn(name="release_wallet")
    async def release_wallet(self, request: ReleaseRequest) -> None:
        """Give the plan's lease back, wherever it is."""
        raise NotImplementedError

    @activity.defn(name="publish")
    async def publish(self, request: PublishRequest) -> ExecutionResultEvent:
        """Store the plan's one result and publish it on EXECUTED."""
        raise NotImplementedError
