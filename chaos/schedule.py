"""When each fault strikes, drawn from the seed before the run starts.

Worker kills and the cluster's fault windows fall anywhere. Server kills and the halt are
episodes that do not overlap one another: a halt needs NATS to be issued and Temporal to
reach the running plans, and two servers down at once would test nothing more than one.
The cluster's faults pause during a halt, so a send delayed by the cluster before the halt
cannot show up after it and look like a send the halt should have stopped.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

EPISODE_MARGIN_S = 2.0  # restart and recovery time after each exclusive episode
FIRST_FAULT_S = 1.5


@dataclass(frozen=True)
class Fault:
    at_s: float  # from the first plan
    kind: str  # worker_kill | nats_kill | temporal_kill | halt | cluster_faults
    params: dict = field(default_factory=dict)


def default_worker_kills(plans: int) -> int:
    """At least 10 per 300-plan run, scaled with the run."""
    return max(1, math.ceil(10 * plans / 300))


def draw_schedule(
    rng: random.Random,
    *,
    publish_s: float,
    workers: int,
    nats_nodes: int,
    max_latency_s: float,
    worker_kills: int,
    nats_kills: int,
    temporal_kills: int,
    halts: int,
    cluster_faults: bool,
) -> tuple[list[Fault], float]:
    """The faults, in time order, and the length of the fault window (at least the publishing time)."""
    episodes: list[tuple[float, Fault]] = []  # (span, fault at 0)
    for index in range(nats_kills):
        # The first NATS outage outlasts every plan's maxLatency: results must wait, not vanish.
        down = max_latency_s + rng.uniform(1.0, 3.0) if index == 0 else rng.uniform(1.0, 3.0)
        episodes.append((down + EPISODE_MARGIN_S, Fault(0, "nats_kill", {"node": rng.randrange(nats_nodes), "down_s": round(down, 2)})))
    for _ in range(temporal_kills):
        down = rng.uniform(1.0, 4.0)
        episodes.append((down + EPISODE_MARGIN_S, Fault(0, "temporal_kill", {"down_s": round(down, 2)})))
    for _ in range(halts):
        restore_after, resume_after = rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.0)
        params = {"slot": rng.randrange(workers), "restore_after_s": round(restore_after, 2), "resume_after_s": round(resume_after, 2)}
        # 0.5 s from cut to halt, ~1.5 s for the operator command itself
        episodes.append((0.5 + restore_after + 1.5 + resume_after + EPISODE_MARGIN_S, Fault(0, "halt", params)))
    rng.shuffle(episodes)
    if sum(span for span, _ in episodes) + FIRST_FAULT_S > publish_s:
        # The episodes outlast the publishing: halts go first, so plans still arrive while halted
        # (a halt with nothing to stop tests nothing).
        episodes.sort(key=lambda episode: episode[1].kind != "halt")

    busy = sum(span for span, _ in episodes)
    window = round(max(publish_s, FIRST_FAULT_S + busy + 1.0), 2)
    slack = window - FIRST_FAULT_S - busy
    weights = [rng.random() + 0.1 for _ in range(len(episodes) + 1)]
    gaps = [slack * w / sum(weights) for w in weights]
    faults: list[Fault] = []
    at = FIRST_FAULT_S
    for (span, fault), gap in zip(episodes, gaps):
        at += gap
        faults.append(Fault(round(at, 2), fault.kind, fault.params))
        at += span

    for _ in range(worker_kills):
        faults.append(
            Fault(
                round(rng.uniform(1.0, max(1.5, window - 0.5)), 2),
                "worker_kill",
                {"slot": rng.randrange(workers), "restart_after_s": round(rng.uniform(0.5, 3.0), 2)},
            )
        )

    if cluster_faults:
        at = rng.uniform(0.0, 2.0)
        while at < window:
            on = rng.uniform(3.0, 8.0)
            params = {"on": True, "drop": 0.2, "rate_limit": 0.1, "delay_ms": round(rng.uniform(20.0, 200.0))}
            faults.append(Fault(round(at, 2), "cluster_faults", params))
            faults.append(Fault(round(min(at + on, window), 2), "cluster_faults", {"on": False}))
            at += on + rng.uniform(2.0, 5.0)
    return sorted(faults, key=lambda f: (f.at_s, f.kind)), window
