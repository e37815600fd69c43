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
from collections.abc import Coroutine
from typing import Any, TypeVar

from settings import SettingsError, load
from settings.executor import ProcessSettings

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        loop = load(ProcessSettings).event_loop
    except SettingsError:
        main.close()  # never started: no "coroutine was never awaited" warning on top of the error
        raise
    if loop == "asyncio":
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)
