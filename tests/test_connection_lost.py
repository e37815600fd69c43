"""A worker never lives on with a dead connection (issue 19): the Temporal side, without a server.

The NATS side is tested against a real nats-server in tests/test_hostile_input.py (a control line
past its limit, a user removed at a config reload)."""
from __future__ import annotations

import asyncio

from worker.main import ConnectionLost, ExecutorWorker
from worker.metrics import ExecutorMetrics


async def test_a_temporal_worker_that_fails_ends_the_process_with_connection_lost():
    """The Temporal side of "a worker never lives on with a dead connection": the SDK worker's run()
    failing (its polls given up) ends wait() with ConnectionLost, which the worker command turns into 75.
    The SDK worker is stubbed: a real one does not fail on a server outage or a deleted namespace (it retries)."""
    class FailingWorker:
        async def run(self):
            raise RuntimeError("Worker failed: poll error")

    worker = ExecutorWorker(config=None, keys=None, metrics=ExecutorMetrics())
    worker._stopping = False
    worker._lost = asyncio.get_running_loop().create_future()
    worker.worker = FailingWorker()
    worker._tasks = [asyncio.create_task(worker._lost_connection()), asyncio.create_task(worker._run_temporal_worker())]
    try:
        await asyncio.wait_for(worker.wait(), 5)
    except ConnectionLost as lost:
        assert lost.service == "temporal" and "poll error" in lost.reason
    else:
        raise AssertionError("wait() returned although the Temporal worker failed")
    assert worker.metrics.connections_lost.labels("temporal")._value.get() == 1
