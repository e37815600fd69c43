"""`hft-executor bench`: plan-to-wire latency, throughput and the durability tax, side by side.

One run starts the embedded stack (as `dev` does), warms it up, then sends the same kind
of plans at the same open-loop rate twice:

* durable: published on PLANNED, each an ExecutePlan workflow, to its result on EXECUTED;
* direct: published on a plain NATS subject to a loop in the same process that runs the
  same parse / wallet lease / build / sign / send code with no Temporal and no KV record.

Plans are published on a fixed schedule, never waiting for an earlier one (no coordinated
omission). Plan-to-wire is measured from the publish timestamp to the local cluster's
first sight of the transaction (its admin view, same machine, same clock); the
difference between the two runs is the durability tax.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nats.js.api import DeliverPolicy

from executor.dispatch import Dispatch
from worker import event_loop, logs
from devtools.dev import DevStack
from worker.main import ExecutorWorker
from worker.nats_connection import connect as nats_connect
from worker.nats_security import ROLES, Permissions, inbox_prefix
from workflows.events import parse_plan

from .plans import bench_plan
from .stack import bench_stack
from .profile import Profiler, print_profile
from settings import CommandError

log = logging.getLogger("hft.bench")
PLAN_MEMO_PREFIX = "hft-executor plan "
DIRECT_SUBJECT = "bench.direct"
# The direct loop's own user (the stack runs with dev's users, permissions and TLS): its subject and nothing else.
BENCH_ROLES = {**ROLES, "bench": Permissions(publish=(f"{DIRECT_SUBJECT}.>",), subscribe=(f"{DIRECT_SUBJECT}.>", inbox_prefix("bench") + ".>"))}
METHODS = ("rpc", "jito_bundle", "tpu_direct")
BLOCKHASH_VALIDITY_BLOCKS = 150  # agave MAX_PROCESSING_AGE: a transaction that never lands is known lost only after it


@dataclass
class Phase:
    name: str
    published_ns: dict[str, int] = field(default_factory=dict)
    result_ns: dict[str, int] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    wire_ns: dict[str, int] = field(default_factory=dict)
    landed: dict[str, set[str]] = field(default_factory=dict)
    started_ns: int = 0
    errors: int = 0
    finished: int = 0  # direct phase: plans whose one attempt has ended, with or without an error

    def plan_to_wire_ms(self) -> list[float]:
        return [(self.wire_ns[p] - t) / 1e6 for p, t in self.published_ns.items() if p in self.wire_ns]

    def plan_to_result_ms(self) -> list[float]:
        return [(self.result_ns[p] - t) / 1e6 for p, t in self.published_ns.items() if p in self.result_ns]


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": round(statistics.median(ordered), 3), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1], 3)}


def cpu_ms(pid: int | str = "self") -> float:
    """User + system CPU of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def methods_for(method: str, count: int) -> list[str]:
    return [METHODS[i % len(METHODS)] for i in range(count)] if method == "mixed" else [method] * count


async def publish_open_loop(publish, plans: list[dict], rate: float | None, phase: Phase) -> None:
    """Publish on schedule: plan i at start + i/rate, whatever happened to the ones before."""
    loop = asyncio.get_running_loop()
    pending = []
    start = loop.time() + 0.05
    phase.started_ns = time.time_ns()
    for index, plan in enumerate(plans):
        if rate is not None:
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        plan["timestamp"] = int(time.time() * 1000)
        phase.published_ns[plan["planId"]] = time.time_ns()
        pending.append(asyncio.create_task(publish(plan)))
    await asyncio.gather(*pending)


async def collect_wire(stack: DevStack, http, phase: Phase) -> None:
    async with http.get(f"{stack.localnet.endpoints['admin']}/transactions", params={"since_ns": str(phase.started_ns - 1)}) as response:
        rows = (await response.json())["transactions"]
    for row in rows:
        for memo in row.get("memos", []):
            if not memo.startswith(PLAN_MEMO_PREFIX):
                continue
            plan_id = memo[len(PLAN_MEMO_PREFIX) :]
            if plan_id not in phase.published_ns:
                continue
            phase.wire_ns[plan_id] = min(phase.wire_ns.get(plan_id, row["firstSeenNs"]), row["firstSeenNs"])
            if row.get("landedSlot") is not None:
                phase.landed.setdefault(plan_id, set()).add(row["signature"])


async def durable_phase(stack: DevStack, worker: ExecutorWorker, plans: list[dict], rate: float | None, wait_s: float) -> Phase:
    phase = Phase("durable")
    arrived = asyncio.Event()

    async def on_result(message) -> None:
        result = json.loads(message.data)
        plan_id = result.get("planId")
        if plan_id in phase.published_ns and plan_id not in phase.results:
            phase.result_ns[plan_id] = time.time_ns()
            phase.results[plan_id] = result
            if len(phase.results) == len(plans):
                arrived.set()

    subscription = await worker.js.subscribe("executed.>", cb=on_result, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    planner = await nats_connect(stack.config.nats_url, stack.nats_auth("planner"))  # as a planner publishes
    planner_js = planner.jetstream()

    async def publish(plan: dict) -> None:
        await planner_js.publish(f"execution.planned.{plan['opportunityId']}", json.dumps(plan).encode())

    progress = asyncio.create_task(_progress("durable", phase, len(plans)))
    await publish_open_loop(publish, plans, rate, phase)
    try:
        await asyncio.wait_for(arrived.wait(), wait_s)
    except TimeoutError:
        log.warning("stage=bench event=results_missing missing=%d", len(plans) - len(phase.results))
    progress.cancel()
    await subscription.unsubscribe()
    await planner.close()
    return phase


async def direct_phase(stack: DevStack, worker: ExecutorWorker, plans: list[dict], rate: float | None) -> Phase:
    """The same hot-path code without Temporal and without the record: parse, then the plan's
    dispatch (lease, build, sign, the send gate, send), then the lease back."""
    phase = Phase("direct")
    dispatcher = worker.dispatcher
    done = asyncio.Event()

    async def handle(message) -> None:
        try:
            dispatch = Dispatch(parse_plan(message.data), dispatcher, durable=False)
            try:
                await dispatch.send(None)
            finally:
                if dispatch.lease is not None:
                    await dispatcher.wallets.release(dispatch.plan_id, dispatch.lease.wallet, "none")
        except Exception as error:
            phase.errors += 1
            log.warning("stage=bench event=direct_failed error=%s", error)
        phase.finished += 1
        if phase.finished == len(plans):
            done.set()

    async def on_message(message) -> None:
        asyncio.create_task(handle(message))

    nc = await nats_connect(stack.config.nats_url, stack.nats_auth("bench"))
    subscription = await nc.subscribe(f"{DIRECT_SUBJECT}.>", cb=on_message)

    async def publish(plan: dict) -> None:
        await nc.publish(f"{DIRECT_SUBJECT}.{plan['opportunityId']}", json.dumps(plan).encode())

    await publish_open_loop(publish, plans, rate, phase)
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        pass
    await subscription.unsubscribe()
    await nc.close()
    return phase


async def _progress(name: str, phase: Phase, total: int) -> None:
    while True:
        await asyncio.sleep(2.0)
        sys.stderr.write(f"  {name}: published {len(phase.published_ns)}/{total}, results {len(phase.results)}\n")
        sys.stderr.flush()


async def history_events(worker: ExecutorWorker, phase: Phase, sample: int = 40) -> float | None:
    successful = [p for p, r in phase.results.items() if r.get("status") == "success"][:sample]
    counts = []
    for plan_id in successful:
        history = await worker.client.get_workflow_handle(f"plan-{plan_id}").fetch_history()
        counts.append(len(history.events))
    return statistics.median(counts) if counts else None


async def run_bench(args: argparse.Namespace) -> dict:
    rate = None if args.rate == "max" else float(args.rate)
    async with bench_stack(args, nats_roles=BENCH_ROLES) as (stack, worker, sink, http):
        run = uuid.uuid4().hex[:8]
        methods = methods_for(args.method, args.plans)

        warmup = [bench_plan(f"warm-{run}-{i}", METHODS[i % len(METHODS)] if args.method == "mixed" else args.method, sink) for i in range(args.warmup)]
        if warmup:
            await durable_phase(stack, worker, warmup, 10.0, 30)
            await direct_phase(stack, worker, [bench_plan(f"warmd-{run}-{i}", p["executionMethod"], sink) for i, p in enumerate(warmup)], 10.0)
            await asyncio.sleep(1.0)

        durable_plans = [bench_plan(f"d-{run}-{i}", m, sink) for i, m in enumerate(methods)]
        profiler = Profiler(args.profile) if args.profile else None
        if profiler:
            profiler.start(await _server_metrics(stack, http))
        temporal_cpu, worker_cpu = cpu_ms(stack.temporal.pid), cpu_ms()
        expected_s = args.plans / rate if rate else args.plans / 40
        # A plan that never lands (a bundle dropped on a `--market`) gets its result only once its
        # blockhash has expired: 150 blocks, plus the slots a market skips.
        expiry_s = BLOCKHASH_VALIDITY_BLOCKS * 1.25 * args.slot_ms / 1000 + 30
        durable = await durable_phase(stack, worker, durable_plans, rate, wait_s=max(60.0, expected_s * 2 + 45, expected_s + expiry_s))
        temporal_cpu, worker_cpu = cpu_ms(stack.temporal.pid) - temporal_cpu, cpu_ms() - worker_cpu
        profile = profiler.stop(await _server_metrics(stack, http), args.plans) if profiler else None
        await asyncio.sleep(0.5)
        await collect_wire(stack, http, durable)

        direct_plans = [bench_plan(f"x-{run}-{i}", m, sink) for i, m in enumerate(methods)]
        direct_cpu = cpu_ms()
        direct = await direct_phase(stack, worker, direct_plans, rate)
        direct_cpu = cpu_ms() - direct_cpu
        await asyncio.sleep(0.5)
        await collect_wire(stack, http, direct)
        events = await history_events(worker, durable)
        market = await market_view(stack, http) if args.market else None

    statuses = [r["status"] for r in durable.results.values()]
    to_wire, direct_to_wire = durable.plan_to_wire_ms(), direct.plan_to_wire_ms()
    durable_p, direct_p = percentiles(to_wire), percentiles(direct_to_wire)
    result_times = sorted(durable.result_ns.values())
    span_s = (result_times[-1] - durable.started_ns) / 1e9 if result_times else None
    return {
        "plans": args.plans,
        "results": len(durable.results),
        "lost": args.plans - len(durable.results),
        "success": statuses.count("success"),
        "failed": statuses.count("failed"),
        "timeout": statuses.count("timeout"),
        "double_landed": sum(1 for signatures in durable.landed.values() if len(signatures) > 1),
        "plan_to_wire_ms": durable_p,
        "plan_to_result_ms": percentiles(durable.plan_to_result_ms()),
        "direct_plan_to_wire_ms": direct_p,
        "durability_tax_ms": {
            "p50": _minus(durable_p["p50"], direct_p["p50"]),
            "p99": _minus(durable_p["p99"], direct_p["p99"]),
        },
        "throughput_results_per_s": round(len(durable.results) / span_s, 2) if span_s else None,
        "history_events_per_plan": events,
        "temporal_cpu_ms_per_plan": round(temporal_cpu / args.plans, 3),
        "worker_cpu_ms_per_plan": round(worker_cpu / args.plans, 3),
        "direct_cpu_ms_per_plan": round(direct_cpu / args.plans, 3),
        **ratios(durable_p, direct_p, (temporal_cpu + worker_cpu) / args.plans, direct_cpu / args.plans),
        "method": args.method,
        "rate": args.rate if rate is None else rate,
        "history_encryption": args.history_encryption,
        "direct_sent": len(direct_to_wire),
        "direct_errors": direct.errors,
        # one attempt each, no retry: a tpu_direct send a loaded leader never took is finished, not sent
        "direct_finished": direct.finished,
        "error_codes": sorted({r.get("errorCode") for r in durable.results.values() if r.get("errorCode")}),
        "land_rate_by_method": land_rate_by_method(durable_plans, durable.results),
        **({"profile": profile} if profile else {}),
        **({"market": market} if market else {}),
        "_samples": {"durable": to_wire, "direct": direct_to_wire},
    }


async def market_view(stack: DevStack, http) -> dict:
    """What the cluster saw of the whole run (warm-up, durable and direct phases): the channel and
    region each landed transaction came by, and the tip auction's counters."""
    admin = stack.localnet.endpoints["admin"]
    async with http.get(f"{admin}/landing") as response:
        landing = await response.json()
    async with http.get(f"{admin}/auction") as response:
        auction = await response.json()
    return {"name": landing.get("market"), "landed_via": landing.get("channels"), "auction": auction.get("counters")}


def land_rate_by_method(plans: list[dict], results: dict[str, dict]) -> dict:
    """Per execution method: plans sent, plans whose result says they landed (status success: the
    chain's word), the share, and the error codes of the rest. On a market that fights back
    (`--market`) this is the figure a landing change must move."""
    by_method: dict[str, dict] = {}
    for plan in plans:
        row = by_method.setdefault(plan["executionMethod"], {"plans": 0, "landed": 0, "land_rate": None, "not_landed": {}})
        row["plans"] += 1
        result = results.get(plan["planId"])
        if result is not None and result.get("status") == "success":
            row["landed"] += 1
        else:
            code = (result or {}).get("errorCode") or ("NO_RESULT" if result is None else result.get("status", "unknown"))
            row["not_landed"][code] = row["not_landed"].get(code, 0) + 1
    for row in by_method.values():
        row["land_rate"] = round(row["landed"] / row["plans"], 3)
    return by_method


async def _server_metrics(stack: DevStack, http) -> str | None:
    if not stack.temporal.metrics_url:
        return None
    async with http.get(stack.temporal.metrics_url) as response:
        return await response.text()


def ratios(durable: dict, direct: dict, durable_cpu: float, direct_cpu: float) -> dict:
    """The comparison a fair reading needs, both paths in the same run: the durable path's latency
    against the direct path's median (p99 too, since a trade is lost at the tail), and the CPU of
    Temporal + worker per plan against the direct path's, measured the same way (process CPU over
    its phase)."""
    return {
        "tax_ratio": {"p50": _over(durable["p50"], direct["p50"]), "p99": _over(durable["p99"], direct["p50"])},
        "cpu_ratio": _over(durable_cpu, direct_cpu),
    }


def _over(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CommandError("--plot needs matplotlib: .venv/bin/pip install matplotlib") from None
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, samples in (("durable (Temporal)", report["_samples"]["durable"]), ("direct (no Temporal)", report["_samples"]["direct"])):
        ordered = sorted(samples)
        if ordered:
            axes.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=f"{name}, p50 {statistics.median(ordered):.1f} ms")
    axes.set_xscale("log")
    axes.set_xlabel("plan-to-wire latency, ms (log scale)")
    axes.set_ylabel("fraction of plans")
    axes.set_title(f"hft-executor: {report['plans']} plans, {report['method']}, rate {report['rate']}/s; tax p50 {report['durability_tax_ms']['p50']} ms")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plans", type=int, default=200, help="plans per run (default 200)")
    parser.add_argument("--rate", default="20", help="plans per second, open loop, or 'max' (default 20)")
    parser.add_argument("--method", choices=("rpc", "jito_bundle", "tpu_direct", "mixed"), default=None, help="one execution method (default rpc)")
    parser.add_argument("--routes", metavar="compare|ROUTE,...",
                        help="instead of --method: the same plans once per route (rpc, jito_bundle, tpu_direct, race; 'compare' is all four), "
                             "interleaved, landing measured by the cluster (bench/routes.py)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="with --routes: plan sizes and the cluster's fault draws (default 0, the market's own fault seed)")
    parser.add_argument("--deadline-ms", type=int, default=30_000, help="with --routes: each plan's deadline, from its publish (default 30000)")
    parser.add_argument("--ports", choices=("default", "auto"), default="auto", help="embedded servers on free ports (default) or the usual ones")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--plot", type=Path, help="draw the durable and direct latency CDFs to this PNG")
    parser.add_argument("--slot-ms", type=float, default=100.0, help="local cluster slot time (default 100)")
    parser.add_argument("--wallets", type=int, default=None, help="funded wallets (default 16; with --routes, 16 per route)")
    parser.add_argument("--market", default=None, metavar="calm|busy|hostile|FILE.json", help="the local cluster's market profile (default calm)")
    parser.add_argument("--warmup", type=int, default=20, help="plans sent first and not counted (default 20)")
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="profile the durable phase: py-spy flame graph and folded stacks, CPU by thread and category, the Temporal server's counters")  # fmt: skip
    parser.add_argument("--compare", metavar="REF", help="run this tree and git REF (a worktree, same interpreter) in turn, A B B A ..., and print both and their ratios")
    parser.add_argument("--pairs", type=int, default=3, help="with --compare: runs of each tree (default 3)")
    parser.add_argument("--history-encryption", choices=("on", "off"), default="on",
                        help="encrypt every payload Temporal stores, as in production (default on); off measures the codec's cost")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    if args.routes:
        return run_routes(args)
    args.method = args.method or "rpc"
    args.wallets = args.wallets or 16
    if args.compare:
        from .compare import run_compare

        return run_compare(args)
    if args.rate != "max":
        try:
            if float(args.rate) <= 0:
                raise ValueError
        except ValueError:
            raise CommandError("--rate takes a positive number of plans per second, or 'max'") from None
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = event_loop.run(run_bench(args))
    if args.plot:
        plot(report, args.plot)
    samples = report.pop("_samples")
    if not args.json:
        _print_report(report, len(samples["durable"]))
    else:
        print(json.dumps(report), flush=True)
    return 0 if report["lost"] == 0 and report["double_landed"] == 0 else 1


def run_routes(args: argparse.Namespace) -> int:
    """`--routes`: the same plans once per route, interleaved (bench/routes.py); exit 0 when `ok`."""
    from .routes import parse_routes, print_routes, run_routes as measure

    if args.method or args.compare or args.profile or args.plot:
        raise CommandError("--routes runs on its own: without --method, --compare, --profile or --plot")
    routes = parse_routes(args.routes)  # refuse a bad list before starting anything
    # Each route gets the wallet pool a one-method run has: 4 routes in flight at once on 16 wallets
    # starve (a lost bundle holds its wallet until its blockhash expires), and plans then end
    # DEADLINE_EXCEEDED unsent, which measures the pool, not the routes.
    args.wallets = args.wallets or 16 * len(routes)
    if args.rate != "max" and not _positive(args.rate):
        raise CommandError("--rate takes a positive number of plans per second, or 'max'")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = event_loop.run(measure(args))
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print_routes(report)
    return 0 if report["ok"] else 1


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _print_report(report: dict, measured: int) -> None:
    def row(name: str, p: dict) -> str:
        return f"  {name:28} p50 {p['p50']!s:>8}  p90 {p['p90']!s:>8}  p99 {p['p99']!s:>8}  max {p['max']!s:>8}"

    print(f"hft-executor bench: {report['plans']} plans, method {report['method']}, rate {report['rate']}, history encryption {report['history_encryption']}")
    print(f"  results {report['results']}  lost {report['lost']}  success {report['success']}  failed {report['failed']}  timeout {report['timeout']}  double-landed {report['double_landed']}")
    print(row("plan-to-wire, durable (ms)", report["plan_to_wire_ms"]))
    print(row("plan-to-wire, direct (ms)", report["direct_plan_to_wire_ms"]))
    print(row("plan-to-result, durable (ms)", report["plan_to_result_ms"]))
    print(f"  durability tax: p50 {report['durability_tax_ms']['p50']} ms, p99 {report['durability_tax_ms']['p99']} ms")
    print(f"  throughput {report['throughput_results_per_s']} results/s; history events per plan {report['history_events_per_plan']}")
    print(f"  CPU per plan: Temporal server {report['temporal_cpu_ms_per_plan']} ms, worker {report['worker_cpu_ms_per_plan']} ms, direct {report['direct_cpu_ms_per_plan']} ms")
    tax = report["tax_ratio"]
    print(f"  against the direct path: p50 {tax['p50']}x, p99 {tax['p99']}x its p50; CPU {report['cpu_ratio']}x")
    for method, row in report["land_rate_by_method"].items():
        print(f"  landed, {method:12} {row['landed']}/{row['plans']} ({row['land_rate']:.0%}); not landed: {row['not_landed'] or 'none'}")
    if "profile" in report:
        print_profile(report["profile"])
