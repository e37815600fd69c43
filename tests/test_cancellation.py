"""Loops that wait on an event with a timeout must stop when cancelled, even when the cancel
lands in the same step as the event is set. On Python 3.11 `asyncio.wait_for` returns the
event's result in that case and the cancellation is lost (python/cpython#86296): the TPU
client's stop() and a confirm handed over at a worker's stop then waited forever (seen as
hung teardowns in the suite)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from executor.confirm import follow
from venue.tpu.sender import TpuClient

ROUNDS = 50


async def cancelled_as_the_event_is_set(start_loop) -> None:
    for _ in range(ROUNDS):
        event = asyncio.Event()
        task = asyncio.create_task(start_loop(event))
        await asyncio.sleep(0.01)  # the loop is waiting on the event now
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        assert done, "the loop swallowed its cancellation and ran on"


async def test_the_tpu_clients_upkeep_loop_stops_when_cancelled_as_a_slot_arrives():
    async def maintain(event):
        owner = SimpleNamespace(tracker=SimpleNamespace(slot_updated=event), _refresh_connections=lambda: None)
        await TpuClient._maintain_loop(owner)

    await cancelled_as_the_event_is_set(maintain)


async def test_a_confirm_stops_when_cancelled_as_a_status_poll_arrives():
    async def following(event):
        watcher = SimpleNamespace(
            statuses={}, polls_done=0, block_height=None, answered_at=time.monotonic(), updated=event, poll_s=0.2,
            watch=lambda signature: 0, unwatch=lambda signature: None,
        )  # fmt: skip
        await follow(
            "p", "sig", 1_000, watcher, commitment="confirmed", rebroadcast=None, rebroadcast_s=1.0,
            may_resend=lambda: False, heartbeat=lambda details: None,
        )  # fmt: skip

    await cancelled_as_the_event_is_set(following)
