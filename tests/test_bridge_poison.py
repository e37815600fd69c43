"""No message holds a bridge slot for ever (issue 19), even one whose handling raises: a unit test
of PlanBridge.take with the rejection stubbed to fail as a bug would (no server needed)."""
from __future__ import annotations

from types import SimpleNamespace

import worker.bridge as bridge_module
from worker.bridge import GIVE_UP_AFTER, MAX_RETRY_S, PlanBridge


class Message:
    """The parts of a JetStream message the bridge reads and answers through."""

    def __init__(self, data: bytes, delivered: int, seq: int = 41) -> None:
        self.data = data
        self.subject = "execution.planned.poison"
        self.metadata = SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=seq))
        self.answers: list[tuple] = []

    async def nak(self, delay: float | None = None) -> None:
        self.answers.append(("nak", delay))

    async def term(self) -> None:
        self.answers.append(("term",))

    async def ack(self) -> None:
        self.answers.append(("ack",))


def _bridge(published: list) -> PlanBridge:
    async def publish(result, message_id):
        published.append((result, message_id))

    return PlanBridge(js=None, client=None, task_queue="q", publish_result=publish, halted=lambda: None)


async def test_a_message_whose_rejection_raises_is_retried_with_backoff_then_told_and_terminated(monkeypatch):
    real = bridge_module.rejection

    def broken(data, *args, **kwargs):  # a bug reached through the message's content
        if data:
            raise TypeError("unhashable type: 'list'")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(bridge_module, "rejection", broken)
    published: list = []
    bridge = _bridge(published)
    delays = []
    for delivered in range(1, GIVE_UP_AFTER):
        message = Message(b'{"executionMethod": []}', delivered)
        await bridge.take(message)
        assert message.answers[0][0] == "nak", message.answers
        delays.append(message.answers[0][1])
    assert delays == sorted(delays) and delays[0] >= 1.0 and max(delays) <= MAX_RETRY_S, "backoff, not a spin"
    assert published == []

    last = Message(b'{"executionMethod": []}', GIVE_UP_AFTER)
    await bridge.take(last)
    assert last.answers == [("term",)]
    [(result, message_id)] = published
    assert (result.plan_id, result.error_code.value, message_id) == ("invalid-PLANNED-41", "INVALID_PLAN", "rejected-PLANNED-41")
    assert bridge.take_failures == GIVE_UP_AFTER


async def test_a_rejection_that_cannot_be_published_waits_with_backoff():
    async def away(result, message_id):
        raise ConnectionError("nats: connection closed")

    bridge = PlanBridge(js=None, client=None, task_queue="q", publish_result=away, halted=lambda: None)
    for delivered, expected in ((1, 1.0), (3, 4.0), (20, MAX_RETRY_S)):
        message = Message(b"not json", delivered)
        await bridge.take(message)
        assert message.answers == [("nak", expected)]

