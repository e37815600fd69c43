"""The event loop of the executor's own processes (worker, dev, bench): uvloop.

Measured with `bench --compare` (docs/performance.md): the worker's Python CPU went mostly
to the event loop's own machinery, not to the trade. asyncio's TLS is pure Python (every
NATS write passes through sslproto.py), and so are its socket transports and its
scheduling; uvloop does the same in C over libuv. The Temporal SDK runs workflow code on
its own deterministic loop either way. EVENT_LOOP=asyncio runs the standard loop instead
(to compare, or to debug with asyncio's debug mode).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    if os.environ.get("EVENT_LOOP", "uvloop") == "asyncio":
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)
