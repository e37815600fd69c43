"""Publish: the plan's one result on EXECUTED, deduplicated by its message id.

Subject executed.<status>.<opportunityId>; header Nats-Msg-Id = planId (a rejected message's
own id for a plan that never ran), so a retried publish (or a re-run workflow task) inside
the stream's dedupe window is dropped by JetStream itself.
"""
from __future__ import annotations

from nats.js import JetStreamContext

from workflows.events import ExecutionResultEvent
from workflows.limits import header_value, is_subject_tokens

RESULT_SUBJECT = "executed.{status}.{opportunity}"


def result_subject(result: ExecutionResultEvent) -> str:
    # A plan's opportunity id is validated as bounded subject tokens (workflows/limits.py); checked
    # again here, since a subject past nats-server's control line closes the whole connection.
    opportunity = result.opportunity_id if is_subject_tokens(result.opportunity_id) else "unknown"
    return RESULT_SUBJECT.format(status=result.status.value, opportunity=opportunity)


async def publish_result(js: JetStreamContext, result: ExecutionResultEvent, message_id: str | None = None) -> None:
    await js.publish(result_subject(result), result.to_wire(), headers={"Nats-Msg-Id": header_value(message_id or result.plan_id)})
