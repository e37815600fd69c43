"""The JetStream streams the executor reads and writes, created if missing.

PLANNED carries plans in, EXECUTED results out, SYSTEM the kill switch. All on file storage,
with NATS_REPLICAS replicas (3 in a cluster: a node's disk can die), so a NATS restart loses
nothing acknowledged. A single server must run with `sync_interval: always` for that to
survive a power cut (deploy/nats/nats.conf): by default it syncs every 2 minutes.

How the windows agree:
- PLANNED keeps a plan 7 days, so it can be redelivered (a consumer recreated, a replay) for 7
  days. The plan's record and stored result live 8 days (executor/records.py) and the bridge
  never starts a plan id that has a result: a plan runs once, ever, for as long as it can come
  back. Temporal's REJECT_DUPLICATE (its retention, 72 h) is a second guard, not the only one.
- EXECUTED drops a repeated Nats-Msg-Id for an hour. A plan's publish is only repeated by its
  own run (an ack lost to a crash or an outage), and every repeat carries the stored result, so
  a repeat later than that (an outage over an hour) is a duplicate of the same story.
"""
from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from executor.records import PLANNED_MAX_AGE_S
from workflows.limits import MAX_PLAN_BYTES

log = logging.getLogger("hft.streams")

PLANNED_SUBJECTS = "execution.planned.>"
EXECUTED_SUBJECTS = "executed.>"
KILLSWITCH_SUBJECT = "system.killswitch"
RESUME_SUBJECT = "system.resume"
STOPPED_SUBJECT = "metrics.executor.stopped"
RESULT_DEDUPE_S = 3600.0
PLAN_DEDUPE_S = 120.0


def stream_configs(replicas: int = 1) -> tuple[StreamConfig, ...]:
    return (
        StreamConfig(
            name="PLANNED",
            subjects=[PLANNED_SUBJECTS],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            duplicate_window=PLAN_DEDUPE_S,  # a planner that sets Nats-Msg-Id gets its retries dropped here already
            max_age=PLANNED_MAX_AGE_S,
            discard=DiscardPolicy.OLD,
            # A plan past this is refused at publish, to the planner (workflows/limits.py says why this size).
            max_msg_size=MAX_PLAN_BYTES,
            num_replicas=replicas,
        ),
        StreamConfig(
            name="EXECUTED",
            subjects=[EXECUTED_SUBJECTS],
            storage=StorageType.FILE,
            duplicate_window=RESULT_DEDUPE_S,
            max_age=7 * 24 * 3600.0,
            num_replicas=replicas,
        ),
        StreamConfig(
            name="SYSTEM",
            subjects=["system.>"],
            storage=StorageType.FILE,
            max_msgs_per_subject=16,  # only the latest halt/resume matter, for restoring state at start
            num_replicas=replicas,
        ),
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    for config in stream_configs(replicas):
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            continue
        if config.max_msg_size and (info.config.max_msg_size or -1) < 0:
            # Made before the limit existed. Workers may not reconfigure PLANNED (worker/nats_security.py); the
            # bridge refuses a larger plan unread all the same, but the stream still stores it.
            log.warning(
                "stage=worker event=stream_unbounded stream=%s: no max_msg_size; set it: nats stream edit %s --max-msg-size %d",
                config.name, config.name, config.max_msg_size,
            )  # fmt: skip
