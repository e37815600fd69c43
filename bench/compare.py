"""`hft-executor bench --compare REF`: this tree against a git ref, interleaved on one machine.

A machine's speed drifts within minutes (other tenants, frequency, caches), so two figures
taken at different times compare the times, not the code. Each tree runs the same bench in
its own process and its own embedded stack, in the order A B B A A B ..., so drift falls on
both sides alike, and each pair is read as a ratio (this tree / REF). The ref is checked out
as a detached git worktree and run with this interpreter and this environment's packages:
the same build, only the code differs. The worktree is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from settings import CommandError

ROOT = Path(__file__).resolve().parents[1]

#: (name, how to read it from a bench --json report); derived figures are computed from the
#: base ones so that a ref whose bench printed fewer fields still compares.
FIGURES = {
    "plan_to_wire_p50_ms": lambda r: r["plan_to_wire_ms"]["p50"],
    "plan_to_wire_p99_ms": lambda r: r["plan_to_wire_ms"]["p99"],
    "direct_p50_ms": lambda r: r["direct_plan_to_wire_ms"]["p50"],
    "tax_ratio_p50": lambda r: _over(
        r["plan_to_wire_ms"]["p50"], r["direct_plan_to_wire_ms"]["p50"]
    ),
    "tax_ratio_p99": lambda r: _over(
        r["plan_to_wire_ms"]["p99"], r["direct_plan_to_wire_ms"]["p50"]
    ),
    "temporal_cpu_ms_per_plan": lambda r: r["temporal_cpu_ms_per_plan"],
    "worker_cpu_ms_per_plan": lambda r: r["worker_cpu_ms_per_plan"],
    "durable_cpu_ms_per_plan": lambda r: round(
        r["temporal_cpu_ms_per_plan"] + r["worker_cpu_ms_per_plan"], 3
    ),
    "direct_cpu_ms_per_plan": lambda r: r.get("direct_cpu_ms_per_plan"),
    "cpu_ratio": lambda r: r.get("cpu_ratio"),
    "throughput_results_per_s": lambda r: r["throughput_results_per_s"],
    "lost": lambda r: r["lost"],
    "double_landed": lambda r: r["double_landed"],
}
#: Read as this tree / REF; counts (lost, double landed) are shown, not divided.
RATIOS = [name for name in FIGURES if name not in ("lost", "double_landed")]


def _over(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def figures(report: dict) -> dict:
    out = {}
    for name, read in FIGURES.items():
        try:
            out[name] = read(report)
        except (KeyError, TypeError):
            out[name] = None
    return out


def bench_argv(args: argparse.Namespace, data_dir: Path) -> list[str]:
    """The child run: the same options, one plain run, JSON out."""
    argv = [
        "bench", "--json", "--plans", str(args.plans), "--rate", str(args.rate), "--method", args.method,
        "--ports", "auto", "--slot-ms", str(args.slot_ms), "--wallets", str(args.wallets), "--warmup", str(args.warmup),
        "--data-dir", str(data_dir), "--log-level", args.log_level,
    ]  # fmt: skip
    if (
        args.history_encryption != "on"
    ):  # a ref from before the option runs only its default
        argv += ["--history-encryption", args.history_encryption]
    if getattr(args, "market", None) is not None:  # only when given: a REF from before --market still runs
        argv += ["--market", args.market]
    return argv


def resolve(ref: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise CommandError(
            f"--compare: {ref!r} is not a commit of {ROOT}: {done.stderr.strip()}"
        )
    return done.stdout.strip()


def run_once(tree: Path, argv: list[str], label: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *argv],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise CommandError(
            f"--compare: the {label} run printed no report (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def compare(args: argparse.Namespace, pairs: int) -> dict:
    sha = resolve(args.compare)
    data_dir = args.data_dir.resolve() / "compare"
    data_dir.mkdir(parents=True, exist_ok=True)
    ref_tree = Path(tempfile.mkdtemp(prefix=f"ref-{sha[:12]}-", dir=data_dir))
    subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "worktree",
            "add",
            "--detach",
            "--force",
            str(ref_tree),
            sha,
        ],
        check=True,
        capture_output=True,
    )
    argv = bench_argv(args, data_dir)
    runs: dict[str, list[dict]] = {"current": [], "ref": []}
    try:
        for index in range(pairs):
            order = ("current", "ref") if index % 2 == 0 else ("ref", "current")
            for label in order:
                sys.stderr.write(f"  compare: pair {index + 1}/{pairs}, {label}\n")
                sys.stderr.flush()
                runs[label].append(
                    run_once(ROOT if label == "current" else ref_tree, argv, label)
                )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(ref_tree, ignore_errors=True)
    pairs_out = []
    for current, ref in zip(runs["current"], runs["ref"], strict=True):
        a, b = figures(current), figures(ref)
        pairs_out.append(
            {
                "current": a,
                "ref": b,
                "ratio": {name: _over(a[name], b[name]) for name in RATIOS},
            }
        )
    median_ratio = {}
    for name in RATIOS:
        values = [p["ratio"][name] for p in pairs_out if p["ratio"][name] is not None]
        median_ratio[name] = round(statistics.median(values), 3) if values else None
    return {
        "ref": args.compare,
        "ref_commit": sha,
        "order": "A B B A ... (A = current tree, B = ref), each run its own stack",
        "bench": argv[1:],
        "pairs": pairs_out,
        "median_ratio": median_ratio,
        "reports": runs,
    }


def run_compare(args: argparse.Namespace) -> int:
    if args.pairs < 1:
        raise CommandError("--pairs takes a positive number")
    result = compare(args, args.pairs)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print_comparison(result)
    failures = [
        r
        for side in result["reports"].values()
        for r in side
        if r.get("lost") or r.get("double_landed")
    ]
    return 1 if failures else 0


def print_comparison(result: dict) -> None:
    print(
        f"hft-executor bench --compare {result['ref']} ({result['ref_commit'][:12]}): {' '.join(result['bench'])}"
    )
    print(
        f"  {result['order']}; ratio = current / ref, per pair, then the median of the pairs"
    )
    header = (
        f"  {'figure':28}"
        + "".join(f"  {'pair ' + str(i + 1):>22}" for i in range(len(result["pairs"])))
        + f"  {'median ratio':>12}"
    )
    print(header)
    for name in FIGURES:
        cells = []
        for pair in result["pairs"]:
            a, b, r = pair["current"][name], pair["ref"][name], pair["ratio"].get(name)
            cells.append(
                f"{_cell(a)} / {_cell(b)}" + (f" {r:.2f}x" if r is not None else "")
            )
        median = result["median_ratio"].get(name)
        print(
            f"  {name:28}"
            + "".join(f"  {c:>22}" for c in cells)
            + f"  {(f'{median:.2f}x' if median is not None else '-'):>12}"
        )


def _cell(value) -> str:
    return "-" if value is None else f"{value:g}"
