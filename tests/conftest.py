"""The executor's session stack: real Temporal, NATS and localnet, plus one in-process worker."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.stack import Stack
from worker.main import ExecutorWorker


class LogLines(logging.Handler):
    """Every log line the worker writes, formatted as it would reach a log file."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session")
def worker_log():
    handler = LogLines()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # what a production worker writes
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture(scope="session")
async def stack(worker_log):
    data_dir = Path(tempfile.mkdtemp(prefix="hft-stack-"))
    running = await Stack(data_dir, status_cache_slots=40).start()
    running.worker = ExecutorWorker(running.config, running.dev.keys)
    await running.worker.start()
    yield running
    await running.worker.stop()
    await running.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
