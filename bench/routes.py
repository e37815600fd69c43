"""`hft-executor bench --routes compare|LIST`: which route lands, measured by the cluster.

The same plans (one seed: the same trades and sizes) go out once per route, interleaved: plan i
goes out as every route in turn, each copy with its own plan id, before plan i+1, and the order
of the routes rotates from one plan to the next. So every route meets the market in the same
state (the same slots, leaders, background load, searchers' bids and wallet pool), and no route
is always first or always last into a slot.

Landing is the cluster's word, not the executor's: the local cluster's admin view
(`GET /transactions`) gives each signature's first-seen slot, landed slot and landing path, and
the plan's memo attributes the signature to the plan (bench/plans.py). The executor's own
`slotsToLand`, where its result has one, is reported next to it under its own name.

The `--json` line (docs/performance.md, "Routes compared"):
`{"market", "plans", "routes": {ROUTE: {"plans", "landed", "land_rate", "slots_to_land":
{"p50", "p90", "p99"}, "tip_lamports_per_landed", "plan_to_result_ms": {"p50", "p99"},
"double_landed", ...}}, "ok", ...}`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
import uuid
from dataclasses import dataclass, field


from devtools.dev import DevStack, admin_post
from settings import CommandError
from worker.main import ExecutorWorker
from worker.nats_connection import connect as nats_connect

from .stack import bench_stack
from .plans import bench_plan

log = logging.getLogger("hft.bench.routes")

ROUTES = ("rpc", "jito_bundle", "tpu_direct", "race")
PLAN_MEMO_PREFIX = "hft-executor plan "
# Why a plan is left out of its route's land-rate denominator: its deadline passed before anything
# was sent, so the cluster never saw its signature (the market gave it no chance to land).
NEVER_SENT_CODE = "DEADLINE_EXCEEDED"
BLOCKHASH_VALIDITY_BLOCKS = 150  # agave MAX_PROCESSING_AGE: a plan that never lands has its result only after it
BASE_LAMPORTS = 5_000  # a bench plan's transfer: 5,000 lamports plus a seeded 0-4,999


def parse_routes(text: str) -> tuple[str, ...]:
    """`compare` is every route; otherwise a comma-separated list of routes, each once, in the order given."""
    if text.strip() == "compare":
        return ROUTES
    routes = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [route for route in routes if route not in ROUTES]
    if unknown or not routes:
        raise CommandError(f"--routes takes 'compare' or a comma-separated list of {', '.join(ROUTES)}; got {text!r}")
    return routes


def interleaved(count: int, routes: tuple[str, ...]) -> list[tuple[int, str]]:
    """(plan index, route) in sending order: plan i as every route, the routes rotated by i, before plan i+1."""
    order = []
    for index in range(count):
        shift = index % len(routes)
        order += [(index, route) for route in routes[shift:] + routes[:shift]]
    return order


def plan_id(run: str, index: int, route: str) -> str:
    return f"r-{run}-{index}-{route}"


def route_plans(run: str, seed: int, count: int, routes: tuple[str, ...], sink: str) -> list[dict]:
    """Every route's copy of every plan, in sending order. Plan i has the same size on every route (the
    seed's); each copy has its own plan id (and so its own memo, signature and wallet lease)."""
    sizes = random.Random(seed)
    lamports = [BASE_LAMPORTS + sizes.randrange(BASE_LAMPORTS) for _ in range(count)]
    return [bench_plan(plan_id(run, index, route), route, sink, lamports=lamports[index]) for index, route in interleaved(count, routes)]


# --- what the cluster saw ------------------------------------------------------------------------


@dataclass
class Wire:
    """The cluster's view of one plan: every signature of it the cluster received (by memo)."""

    rows: list[dict] = field(default_factory=list)

    @property
    def landed(self) -> list[dict]:
        return [row for row in self.rows if row.get("landedSlot") is not None]

    @property
    def landed_ok(self) -> dict | None:
        """The row that landed without an error, if any (a landed error is a trade that failed on chain)."""
        return next((row for row in self.landed if row.get("err") is None), None)

    def slots_to_land(self) -> int | None:
        """Landed slot minus the first slot any of its signatures reached the cluster."""
        row = self.landed_ok
        seen = [r["firstSeenSlot"] for r in self.rows if r.get("firstSeenSlot") is not None]
        if row is None or not seen:
            return None
        return row["landedSlot"] - min(seen)


def wire_by_plan(rows: list[dict], plan_ids: set[str]) -> dict[str, Wire]:
    """Admin `GET /transactions` rows attributed to plans by their memo; rows of other plans are ignored."""
    wires: dict[str, Wire] = {}
    for row in rows:
        for memo in row.get("memos") or []:
            if memo.startswith(PLAN_MEMO_PREFIX) and memo[len(PLAN_MEMO_PREFIX) :] in plan_ids:
                wires.setdefault(memo[len(PLAN_MEMO_PREFIX) :], Wire()).rows.append(row)
    return wires


# --- aggregation ---------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q of the values at or below it (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-round(q * len(ordered) * 1e9) // int(1e9)))  # ceil(q * n), immune to float noise
    return ordered[min(len(ordered), rank) - 1]


def spread(values: list[float], keys: tuple[str, ...] = ("p50", "p90", "p99"), digits: int = 3) -> dict:
    out = {}
    for key in keys:
        value = quantile(values, int(key[1:]) / 100)
        out[key] = None if value is None else round(value, digits)
    return out


def tip_of(result: dict | None) -> int:
    if not result:
        return 0
    cost = result.get("executionCost") or {}
    return int(cost.get("tipLamports") or result.get("tipLamports") or 0)


def landed_via(row: dict) -> str:
    via = row.get("landedVia") or {}
    channel = via.get("channel") or "unknown"
    return f"{channel}:{via['region']}" if via.get("region") else channel


def summarize_route(plan_ids: list[str], results: dict[str, dict], wires: dict[str, Wire], result_ms: dict[str, float]) -> dict:
    """One route's row. `landed`: plans with a transaction the cluster landed without an error.
    `land_rate`: landed / (plans - excluded), where `excluded` are plans whose result is
    DEADLINE_EXCEEDED and whose signature the cluster never saw: their deadline allowed no landing."""
    landed, excluded, double, tips = 0, 0, 0, 0
    slots, executor_slots, result_times = [], [], []
    not_landed: dict[str, int] = {}
    via: dict[str, int] = {}
    for pid in plan_ids:
        wire, result = wires.get(pid, Wire()), results.get(pid)
        if len(wire.landed) > 1:
            double += 1
        if pid in result_ms:
            result_times.append(result_ms[pid])
        if result is not None and result.get("slotsToLand") is not None:
            executor_slots.append(result["slotsToLand"])
        row = wire.landed_ok
        if row is not None:
            landed += 1
            tips += tip_of(result)
            via[landed_via(row)] = via.get(landed_via(row), 0) + 1
            if wire.slots_to_land() is not None:
                slots.append(wire.slots_to_land())
            continue
        if result is not None and result.get("errorCode") == NEVER_SENT_CODE and not wire.rows:
            excluded += 1
        code = (result or {}).get("errorCode") or ("NO_RESULT" if result is None else result.get("status", "unknown"))
        not_landed[code] = not_landed.get(code, 0) + 1
    allowed = len(plan_ids) - excluded
    return {
        "plans": len(plan_ids),
        "landed": landed,
        "land_rate": round(landed / allowed, 4) if allowed else None,
        "slots_to_land": spread(slots),
        "tip_lamports_per_landed": round(tips / landed, 1) if landed else None,
        "plan_to_result_ms": spread(result_times, ("p50", "p99"), 1),
        "double_landed": double,
        "excluded": excluded,
        "results": sum(1 for pid in plan_ids if pid in results),
        "result_landed": sum(1 for pid in plan_ids if (results.get(pid) or {}).get("status") == "success"),
        "executor_slots_to_land": spread(executor_slots),
        "landed_via": dict(sorted(via.items())),
        "not_landed": dict(sorted(not_landed.items())),
    }


def summarize(market: str, count: int, plans: list[dict], results: dict[str, dict], result_counts: dict[str, int], rows: list[dict], result_ms: dict[str, float]) -> dict:
    """The whole report: one row per route, in the routes' order; `ok` when every plan has exactly one
    result and no plan landed twice (land rates are measurements, not pass or fail)."""
    by_route: dict[str, list[str]] = {}
    for plan in plans:
        by_route.setdefault(plan["executionMethod"], []).append(plan["planId"])
    wires = wire_by_plan(rows, {plan["planId"] for plan in plans})
    routes = {route: summarize_route(ids, results, wires, result_ms) for route, ids in by_route.items()}
    exactly_once = all(result_counts.get(plan["planId"], 0) == 1 for plan in plans)
    return {"market": market, "plans": count, "routes": routes, "ok": exactly_once and all(row["double_landed"] == 0 for row in routes.values())}


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Sent:
    published_ns: dict[str, int] = field(default_factory=dict)
    result_ns: dict[str, int] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    result_counts: dict[str, int] = field(default_factory=dict)
    started_ns: int = 0

    def result_ms(self) -> dict[str, float]:
        return {pid: (self.result_ns[pid] - t) / 1e6 for pid, t in self.published_ns.items() if pid in self.result_ns}


async def send_interleaved(stack: DevStack, worker: ExecutorWorker, plans: list[dict], rate: float | None, wait_s: float, deadline_ms: int) -> Sent:
    """Publish on PLANNED in the given order, open loop (copy k at start + k/rate), each plan's deadline
    counted from its own publish; collect results from EXECUTED, counting every one."""
    from nats.js.api import DeliverPolicy

    sent = Sent()
    arrived = asyncio.Event()

    async def on_result(message) -> None:
        result = json.loads(message.data)
        pid = result.get("planId")
        if pid not in sent.published_ns:
            return
        sent.result_counts[pid] = sent.result_counts.get(pid, 0) + 1
        if pid not in sent.results:
            sent.result_ns[pid] = time.time_ns()
            sent.results[pid] = result
            if len(sent.results) == len(plans):
                arrived.set()

    subscription = await worker.js.subscribe("executed.>", cb=on_result, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    planner = await nats_connect(stack.config.nats_url, stack.nats_auth("planner"))
    planner_js = planner.jetstream()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    sent.started_ns = time.time_ns()
    pending = []
    progress = asyncio.create_task(_progress(sent, len(plans)))
    for index, plan in enumerate(plans):
        if rate is not None:
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        now_ms = int(time.time() * 1000)
        plan["timestamp"], plan["deadline"] = now_ms, now_ms + deadline_ms
        sent.published_ns[plan["planId"]] = time.time_ns()
        pending.append(asyncio.create_task(planner_js.publish(f"execution.planned.{plan['opportunityId']}", json.dumps(plan).encode())))
    await asyncio.gather(*pending)
    try:
        await asyncio.wait_for(arrived.wait(), wait_s)
    except TimeoutError:
        log.warning("stage=bench event=results_missing missing=%d", len(plans) - len(sent.results))
    await asyncio.sleep(1.0)  # a second result for a plan, if any, is counted
    progress.cancel()
    await subscription.unsubscribe()
    await planner.close()
    return sent


async def _progress(sent: Sent, total: int) -> None:
    while True:
        await asyncio.sleep(2.0)
        sys.stderr.write(f"  routes: published {len(sent.published_ns)}/{total}, results {len(sent.results)}\n")
        sys.stderr.flush()


async def run_routes(args: argparse.Namespace) -> dict:
    routes = parse_routes(args.routes)
    rate = None if args.rate == "max" else float(args.rate)
    seed = 0 if args.seed is None else args.seed
    async with bench_stack(args) as (stack, worker, sink, http):
        admin = stack.localnet.endpoints["admin"]
        if args.seed is not None:  # the cluster's injected faults (and each region's) follow the run's seed
            await admin_post(http, f"{admin}/faults", {"seed": args.seed})
        run = uuid.uuid4().hex[:8]
        if args.warmup:
            warmup = route_plans(f"w{run}", seed, max(1, args.warmup // len(routes)), routes, sink)
            await send_interleaved(stack, worker, warmup, 10.0, 30, args.deadline_ms)
            await asyncio.sleep(1.0)
        plans = route_plans(run, seed, args.plans, routes, sink)
        expected_s = len(plans) / rate if rate else len(plans) / 40
        expiry_s = BLOCKHASH_VALIDITY_BLOCKS * 1.25 * args.slot_ms / 1000 + 30
        sent = await send_interleaved(stack, worker, plans, rate, max(60.0, expected_s * 2 + 45, expected_s + expiry_s), args.deadline_ms)
        async with http.get(f"{admin}/transactions", params={"since_ns": str(sent.started_ns - 1)}) as response:
            rows = (await response.json())["transactions"]
    report = summarize(args.market or "calm", args.plans, plans, sent.results, sent.result_counts, rows, sent.result_ms())
    return report | {"order": list(routes), "seed": seed, "rate": args.rate if rate is None else rate, "slot_ms": args.slot_ms, "wallets": args.wallets}


def print_routes(report: dict, out=sys.stdout) -> None:
    """One row per route, for people."""
    print(f"hft-executor bench: {report['plans']} plans x {len(report['routes'])} routes, market {report['market']}, seed {report['seed']}, "
          f"rate {report['rate']}/s (all routes), slot {report['slot_ms']} ms", file=out)  # fmt: skip
    header = f"  {'route':12} {'plans':>5} {'excl':>4} {'landed':>6} {'rate':>7} {'slots p50/p90/p99':>18} {'exec p90':>8} {'tip/landed':>10} {'result ms p50/p99':>18} {'double':>6}"
    print(header, file=out)
    for route, row in report["routes"].items():
        slots = "/".join(str(row["slots_to_land"][k]) for k in ("p50", "p90", "p99"))
        result = "/".join(str(row["plan_to_result_ms"][k]) for k in ("p50", "p99"))
        rate = "-" if row["land_rate"] is None else f"{row['land_rate']:.1%}"
        print(f"  {route:12} {row['plans']:>5} {row['excluded']:>4} {row['landed']:>6} {rate:>7} {slots:>18} {row['executor_slots_to_land']['p90']!s:>8} "
              f"{row['tip_lamports_per_landed']!s:>10} {result:>18} {row['double_landed']:>6}", file=out)  # fmt: skip
    for route, row in report["routes"].items():
        if row["not_landed"] or row["landed_via"]:
            print(f"  {route}: landed via {row['landed_via'] or 'nothing'}; not landed {row['not_landed'] or 'none'}", file=out)
    excluded = sum(row["excluded"] for row in report["routes"].values())
    if excluded > 0.05 * sum(row["plans"] for row in report["routes"].values()):
        print(f"  note: {excluded} plans ended DEADLINE_EXCEEDED before anything was sent (excluded from land_rate): "
              f"the executor or its wallet pool was saturated; lower --rate or raise --wallets", file=out)  # fmt: skip
    print(f"  ok {report['ok']} (every plan exactly one result, no plan landed twice)", file=out)
