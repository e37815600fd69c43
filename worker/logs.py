"""One log line per event: time, level, component, then the event's own key=value pairs."""
from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO", stream=sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter at INFO is not an event of ours.
    for noisy in ("httpx", "httpx2", "httpcore", "aiohttp.access", "temporalio.workflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Each activity logs its own outcome with plan id and stage; the SDK's per-attempt traceback adds nothing.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
