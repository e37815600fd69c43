"""`hft-executor bench --profile DIR`: where the durable path's CPU goes, per plan.

Three views of the durable phase, all taken over the same window as bench's CPU figures:

* the worker process's threads (from /proc): the Python threads (event loop, workflow
  activations) against the Temporal SDK core's Rust threads, which no Python profiler sees;
* py-spy samples of the Python threads (a sampling profiler from PyPI, attached from
  outside, not pausing the process), folded into the table below and drawn as a flame graph;
* the Temporal dev server's own Prometheus counters: requests and persistence operations
  per plan, the server's side of the bill (the dev server has no pprof endpoint).

Category rules are matched in order against every frame of a sample, so a log call made
inside a local activity counts as logging: the cross-cutting costs come first.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from settings import CommandError

#: (category, frame pattern): the first category any frame of a sample matches.
CATEGORIES: list[tuple[str, re.Pattern]] = [
    ("logging", re.compile(r"\(logging/|worker/logs\.py")),
    (
        "metrics",
        re.compile(r"prometheus_client/|worker/metrics\.py|\(temporalio/runtime\.py"),
    ),
    ("history codec (AES-GCM)", re.compile(r"workflows/codec\.py|cryptography/")),
    (
        "payload conversion (pydantic, JSON)",
        re.compile(
            r"temporalio/converter\.py|temporalio/contrib/pydantic|pydantic/|pydantic_core|\(json/"
        ),
    ),
    ("NATS KV calls", re.compile(r"nats/js/kv\.py")),
    (
        "local activity: execute (claim / dispatch)",
        re.compile(r"^ExecutionActivities\.execute \(activities/execution\.py"),
    ),
    (
        "local activity: confirm",
        re.compile(r"^ExecutionActivities\.confirm \(activities/execution\.py"),
    ),
    (
        "local activity: settle",
        re.compile(r"^ExecutionActivities\.settle \(activities/execution\.py"),
    ),
    (
        "local activity: release",
        re.compile(r"^ExecutionActivities\.release_wallet \(activities/execution\.py"),
    ),
    (
        "local activity: publish",
        re.compile(r"^ExecutionActivities\.publish \(activities/execution\.py"),
    ),
    ("bridge (PLANNED, start, prepare, send ahead)", re.compile(r"worker/bridge\.py")),
    (
        "dispatch: lease, build, policy, sign, send",
        re.compile(r"executor/(dispatch|build|policy|keystore|submit)\.py"),
    ),
    ("workflow code (ExecutePlan)", re.compile(r"workflows/execute_plan\.py")),
    (
        "SDK: workflow activation",
        re.compile(
            r"temporalio/worker/_workflow|temporalio/worker/workflow_sandbox|temporalio/workflow\.py"
        ),
    ),
    (
        "SDK: activity and local activity plumbing",
        re.compile(r"temporalio/worker/_activity\.py"),
    ),
    (
        "SDK: client, bridge to the core",
        re.compile(
            r"temporalio/client\.py|temporalio/bridge/|temporalio/service\.py|temporalio/worker/_worker\.py"
        ),
    ),
    (
        "status poller, leader tracker, presence, kill switch",
        re.compile(
            r"executor/confirm\.py|venue/tpu/|worker/presence\.py|worker/killswitch\.py|executor/wallets\.py"
        ),
    ),
    ("bench harness (publisher, result collector)", re.compile(r"bench/command\.py")),
    (
        "NATS client (protocol)",
        re.compile(r"nats/aio/|nats/protocol/|nats/js/client\.py"),
    ),
    (
        "HTTP clients (JSON-RPC)",
        re.compile(r"aiohttp/|venue/rpc\.py|venue/chain\.py"),
    ),
    ("TLS and sockets", re.compile(r"sslproto\.py|\(ssl\.py|selector_events\.py")),
]
OTHER = "event loop and other"


def categorize(frames: list[str]) -> str:
    """`frames` root first, each "function (file:line)" as py-spy folds them."""
    for category, pattern in CATEGORIES:
        if any(pattern.search(frame) for frame in frames):
            return category
    return OTHER


#: A thread waiting, not working (the sampler counts only GIL holders; these are belt and braces).
IDLE_LEAF = re.compile(
    r"^(EpollSelector\.select|select) \(selectors\.py|^_worker \(concurrent/futures/thread\.py|^wait \(threading\.py"
)
LOOP_STEP = "BaseEventLoop._run_once (asyncio/base_events.py"
TASK_STEP = "Handle._run (asyncio/events.py"
RUNNER = "Runner.run (asyncio/runners.py"
EVENT_LOOP = "event loop (asyncio scheduling, sockets)"


def fold(collapsed: str) -> Counter:
    """Samples per category from py-spy's raw (collapsed) output: `frame;frame;... count`. A sample
    of the main thread is judged by its task's frames only (everything runs under bench's own
    `run`, so the frames above the event loop would put it all in one box); what the loop does
    between tasks is the event loop's own (asyncio's is Python; uvloop's is C, seen as a sample
    with no frame below the runner)."""
    counts: Counter = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [
            f for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        if not frames or IDLE_LEAF.search(frames[-1]):
            continue
        steps = [i for i, frame in enumerate(frames) if frame.startswith(LOOP_STEP)]
        runner = [i for i, frame in enumerate(frames) if frame.startswith(RUNNER)]
        if steps:  # asyncio's loop: a task's frames start under Handle._run
            task = frames[steps[0] + 1 :]
            if not task or not task[0].startswith(TASK_STEP):
                counts[EVENT_LOOP] += int(count)
                continue
            frames = task[1:]
        elif runner:  # uvloop: the loop is C, a task's frames follow the runner directly
            frames = frames[runner[0] + 1 :]
        counts[categorize(frames) if frames else EVENT_LOOP] += int(count)
    return counts


# --- threads of this process ------------------------------------------------------------


def thread_cpu_ms() -> dict[str, float]:
    """CPU so far of this process's threads, by role: the main thread (asyncio loop), other Python
    threads (workflow activations, to_thread) and the SDK core's threads (named by Rust)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: Counter = Counter()
    pid = os.getpid()
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread ended between the listing and the read
        cpu = (int(fields[11]) + int(fields[12])) * 1000 / ticks
        if int(task.name) == pid:
            role = "main thread (asyncio loop)"
        elif comm.startswith(("python", "asyncio", "ThreadPool")):
            role = "other Python threads (workflow activations)"
        else:
            role = f"native: {re.sub(r'[-_]?[0-9]+$', '', comm)}"
        out[role] += cpu
    return dict(out)


# --- the Temporal dev server's counters ---------------------------------------------------


METRIC_LINE = re.compile(
    r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$"
)


def server_counters(text: str) -> Counter:
    """Request and persistence counts by operation from the server's /metrics."""
    out: Counter = Counter()
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if not match or match["name"] not in (
            "persistence_requests",
            "service_requests",
        ):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        out[f"{match['name']}:{labels.get('operation', '?')}"] += float(match["value"])
    return out


@dataclass
class Profiler:
    """py-spy on this process (raw for the table, flame graph for the eye), thread CPU and the
    server's counters, between `start()` and `stop()`."""

    directory: Path
    pyspy: list[subprocess.Popen] = field(default_factory=list)
    threads_before: dict[str, float] = field(default_factory=dict)
    server_before: Counter = field(default_factory=Counter)

    def start(self, server_metrics: str | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise CommandError("--profile needs py-spy: .venv/bin/pip install py-spy")
        pid = str(os.getpid())
        for fmt, name in (
            ("raw", "worker.collapsed"),
            ("flamegraph", "worker-flamegraph.svg"),
        ):
            self.pyspy.append(subprocess.Popen(
                [exe, "record", "--pid", pid, "--nonblocking", "--gil", "--rate", "200", "--format", fmt, "-o", str(self.directory / name)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            ))  # fmt: skip
        self.threads_before = thread_cpu_ms()
        self.server_before = server_counters(server_metrics or "")

    def stop(self, server_metrics: str | None, plans: int) -> dict:
        threads_after = thread_cpu_ms()
        server_after = server_counters(server_metrics or "")
        for process in self.pyspy:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for process in self.pyspy:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        threads = {
            role: round(
                (threads_after.get(role, 0.0) - self.threads_before.get(role, 0.0))
                / plans,
                3,
            )
            for role in threads_after
        }
        collapsed = self.directory / "worker.collapsed"
        samples = fold(collapsed.read_text()) if collapsed.exists() else Counter()
        total = sum(samples.values())
        python_ms = sum(v for k, v in threads.items() if not k.startswith("native"))
        categories = {
            name: {"share": round(count / total, 4), "ms_per_plan": round(python_ms * count / total, 3)}
            for name, count in samples.most_common()
        } if total else {}  # fmt: skip
        server = {
            key: round(
                (server_after[key] - self.server_before.get(key, 0.0)) / plans, 2
            )
            for key in server_after
        }
        return {
            "threads_cpu_ms_per_plan": dict(
                sorted(threads.items(), key=lambda kv: -kv[1])
            ),
            "python_samples": total,
            "python_categories": categories,
            "server_per_plan": {
                k: v for k, v in sorted(server.items(), key=lambda kv: -kv[1]) if v > 0
            },
            "files": {
                "collapsed": str(collapsed),
                "flamegraph": str(self.directory / "worker-flamegraph.svg"),
            },
        }


def print_profile(profile: dict) -> None:
    print("  CPU per plan by thread of the worker process (ms):")
    for role, ms in profile["threads_cpu_ms_per_plan"].items():
        print(f"    {role:52} {ms:8.3f}")
    print(
        f"  Python threads by category (py-spy, {profile['python_samples']} samples):"
    )
    for name, row in profile["python_categories"].items():
        print(f"    {name:52} {row['ms_per_plan']:8.3f} ms  {row['share'] * 100:5.1f}%")
    print("  Temporal dev server, per plan:")
    for key, value in profile["server_per_plan"].items():
        print(f"    {key:52} {value:8.2f}")
    print(f"  flame graph: {profile['files']['flamegraph']}")
