"""Publish: the plan's one result on EXECUTED, deduplicated by plan id.

Subject executed.<status>.<opportunityId>; header Nats-Msg-Id = planId, so a retried
publish (or a re-run workflow task) inside the stream's dedupe window is dropped by
JetStream itself.
"""
from __future__ import annotations

from nats.js import JetStreamContext

from workflows.events import ExecutionResultEvent

RESULT_SUBJECT = "executed.{status}.{opportunity}"


async def publish_result(js: JetStreamContext, result: ExecutionResultEvent) -> None:
    subject = RESULT_SUBJECT.format(status=result.status.value, opportunity=result.opportunity_id)
    await js.publish(subject, result.to_wire(), headers={"Nats-Msg-Id": result.plan_id})
