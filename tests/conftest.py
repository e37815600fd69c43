"""The executor's session stack: real Temporal, NATS and localnet, plus one in-process worker."""
from __future__ import annotations

import logging

import pytest

from tests.stack import stack_with_worker


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
    async with stack_with_worker("hft-stack-", status_cache_slots=40) as running:
        yield running
