"""`hft-executor chaos`: a fault campaign on an embedded stack whose parts are real processes.

It publishes plans open loop while it SIGKILLs and restarts workers, kill -9s and restarts
nats-server and the Temporal dev server, makes the local cluster drop, rate-limit and delay,
and halts while one worker is cut off from NATS. Then it waits for every result and for
every blockhash to expire, reads everything from outside, and checks that every plan has
exactly one result that agrees with the chain, that at most one transaction per plan
reached the wire, that nothing new went out after the halt, and that nothing is left over
(`chaos.checker`). The exit code is 0 only if all of that holds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from worker import logs

from .campaign import Campaign, Settings
from .checker import check
from .schedule import default_worker_kills
from settings import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plans", type=int, default=300, help="plans to publish (default 300)")
    parser.add_argument("--rate", type=float, default=10.0, help="plans per second, open loop (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="draws plans and fault moments (default: random, printed)")
    parser.add_argument("--slot-ms", type=float, default=100.0, help="local cluster slot time (default 100: blockhashes expire in ~15 s)")
    parser.add_argument("--wallets", type=int, default=24, help="funded wallets (default 24, so leases are not the bottleneck)")
    parser.add_argument("--nats-cluster", type=int, default=1, metavar="N", help="run NATS as an N-node cluster and kill single nodes (default 1: one server)")
    parser.add_argument("--no-cluster-faults", dest="cluster_faults", action="store_false", help="no drops, 429s, delays or read faults on the local cluster")
    parser.add_argument("--worker-kills", type=int, default=None, help="worker SIGKILLs (default: 10 per 300 plans, at least 1)")
    parser.add_argument("--nats-kills", type=int, default=2, help="nats-server kill -9s; the first outage outlasts every maxLatency (default 2)")
    parser.add_argument("--temporal-kills", type=int, default=1, help="Temporal dev server kill -9s (default 1)")
    parser.add_argument("--halts", type=int, default=1, help="halts issued while one worker is cut off from NATS, then resumed (default 1)")
    parser.add_argument("--results-timeout", type=float, default=120.0, help="seconds to wait for every result after the last fault (default 120)")
    parser.add_argument("--hostile", type=int, default=0, metavar="N", help="also publish N hostile messages (chaos/hostile.py); each must get one failed result with a code (default 0)")
    parser.add_argument("--json", action="store_true", help="print the verdict as one JSON line, last on stdout")
    parser.add_argument("--data-dir", type=Path, default=Path(".data"), help="runs go under <data-dir>/chaos/ (default .data)")
    parser.add_argument("--keep-data", action="store_true", help="keep the run's servers' data and logs even when ok")
    parser.add_argument("--recheck", type=Path, metavar="EVIDENCE", help="check a saved evidence.json again (no campaign)")
    parser.add_argument("--market", default=None, metavar="calm|busy|hostile|FILE.json", help="the local cluster's market profile (default calm); the campaign's own cluster faults still apply")
    parser.add_argument("--log-level", default="WARNING")


def settings_from(args: argparse.Namespace) -> Settings:
    if args.plans < 1 or args.rate <= 0 or args.workers < 1:
        raise CommandError("--plans, --rate and --workers must be positive")
    return Settings(
        plans=args.plans,
        rate=args.rate,
        workers=args.workers,
        seed=args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big") % 1_000_000,
        slot_ms=args.slot_ms,
        wallets=args.wallets,
        nats_cluster=args.nats_cluster,
        cluster_faults=args.cluster_faults,
        worker_kills=args.worker_kills if args.worker_kills is not None else default_worker_kills(args.plans),
        nats_kills=args.nats_kills,
        temporal_kills=args.temporal_kills,
        halts=args.halts,
        results_timeout_s=args.results_timeout,
        hostile=args.hostile,
        market=args.market,
    )


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    if args.recheck:
        verdict = check(json.loads(args.recheck.read_text()))
        print(json.dumps(verdict.summary) if args.json else _text(verdict.summary, verdict.violations), flush=True)
        return 0 if verdict.ok else 1
    settings = settings_from(args)
    base = (args.data_dir / "chaos").resolve()
    run_dir = base / f"run-{time.strftime('%Y%m%d-%H%M%S')}-seed{settings.seed}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    outcome = None
    try:
        outcome = asyncio.run(_run(settings, run_dir))
    finally:
        if outcome is None:
            sys.stderr.write(f"chaos event=aborted data={run_dir}\n")
    summary = outcome.verdict.summary
    (run_dir / "evidence.json").write_text(json.dumps(outcome.evidence))
    report_path = base / f"{run_dir.name}-report.json"
    report_path.write_text(json.dumps(outcome.report, indent=1))
    sys.stderr.write(f"chaos event=report path={report_path} failing_plans={len(outcome.stories)} ok={str(summary['ok']).lower()}\n")
    if summary["ok"] and not args.keep_data:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        sys.stderr.write(f"chaos event=kept data={run_dir} evidence={run_dir / 'evidence.json'}\n")
    sys.stderr.flush()
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(_text(summary, outcome.verdict.violations), flush=True)
    return 0 if summary["ok"] else 1


async def _run(settings: Settings, run_dir: Path):
    campaign = Campaign(settings, run_dir)
    try:
        return await campaign.run()
    finally:
        await campaign.stack.stop()


def _text(summary: dict, violations: dict) -> str:
    lines = [f"hft-executor chaos: {summary['plans']} plans, seed {summary['seed']}: {'ok' if summary['ok'] else 'VIOLATIONS'}"]
    keys = ("results", "lost", "duplicate_publishes", "contradicting_publishes", "temporal_mismatch", "double_landed", "multiple_signatures",
            "disagree_with_chain", "sent_after_halt", "leases_left", "running_left", "pending_left", "success")  # fmt: skip
    lines.append("  " + "  ".join(f"{key} {summary[key]}" for key in keys))
    lines.append(f"  takeover_ms {summary['takeover_ms']}  kills {summary['kills']}  error_codes {summary['error_codes']}")
    for name, items in violations.items():
        lines.append(f"  {name}: " + "; ".join(f"{item.get('planId')}: {item['why']}" for item in items[:5]) + (f" (+{len(items) - 5})" if len(items) > 5 else ""))
    return "\n".join(lines)
