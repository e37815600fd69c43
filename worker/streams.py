"""The JetStream streams the executor reads and writes, created if missing.

PLANNED carries plans in, EXECUTED results out, SYSTEM the kill switch. All on file
storage so a NATS restart loses nothing. EXECUTED deduplicates by Nats-Msg-Id (the plan
id) for an hour: a publish re-run after a crash or a Temporal outage of up to that long
still yields one result.
"""
from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

PLANNED_SUBJECTS = "execution.planned.>"
EXECUTED_SUBJECTS = "executed.>"
KILLSWITCH_SUBJECT = "system.killswitch"
RESUME_SUBJECT = "system.resume"
STOPPED_SUBJECT = "metrics.executor.stopped"
RESULT_DEDUPE_S = 3600.0
PLAN_DEDUPE_S = 120.0

STREAMS = (
    StreamConfig(
        name="PLANNED",
        subjects=[PLANNED_SUBJECTS],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=PLAN_DEDUPE_S,  # a planner that sets Nats-Msg-Id gets its retries dropped here already
        max_age=7 * 24 * 3600.0,
        discard=DiscardPolicy.OLD,
    ),
    StreamConfig(
        name="EXECUTED",
        subjects=[EXECUTED_SUBJECTS],
        storage=StorageType.FILE,
        duplicate_window=RESULT_DEDUPE_S,
        max_age=7 * 24 * 3600.0,
    ),
    StreamConfig(
        name="SYSTEM",
        subjects=["system.>"],
        storage=StorageType.FILE,
        max_msgs_per_subject=16,  # only the latest halt/resume matter, for restoring state at start
    ),
)


async def ensure_streams(js: JetStreamContext) -> None:
    for config in STREAMS:
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
