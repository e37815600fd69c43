"""The benchmark runs end to end and loses nothing (timings are reported, never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.stack import ROOT


def test_bench_mixed_small_run_loses_nothing_and_draws_its_plot(tmp_path):
    plot = tmp_path / "cdf.png"
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "bench", "--plans", "12", "--rate", "12", "--method", "mixed",
         "--warmup", "2", "--slot-ms", "50", "--json", "--plot", str(plot), "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["plans"] == report["results"] == report["success"] == 12, report
    assert report["lost"] == 0 and report["double_landed"] == 0
    # The direct path is the baseline: one attempt a plan, no retry (the durable path retries). On a
    # loaded box an attempt may miss without an error (a tpu_direct send whose QUIC connect timed
    # out: seen twice, 11 of 12 on the wire): every plan's attempt ends, and most reach the wire.
    assert report["direct_finished"] == 12 and report["direct_sent"] >= 6, done.stderr[-2000:]
    assert report["direct_sent"] + report["direct_errors"] <= 12
    for key in ("plan_to_wire_ms", "plan_to_result_ms", "direct_plan_to_wire_ms"):
        assert set(report[key]) == {"p50", "p90", "p99", "max"} and report[key]["p50"] > 0
    assert report["history_events_per_plan"] <= 20
    assert report["temporal_cpu_ms_per_plan"] > 0 and report["worker_cpu_ms_per_plan"] > 0 and report["direct_cpu_ms_per_plan"] > 0
    cpu = report["temporal_cpu_ms_per_plan"] + report["worker_cpu_ms_per_plan"]
    assert abs(report["cpu_ratio"] - cpu / report["direct_cpu_ms_per_plan"]) < 0.01
    assert report["tax_ratio"]["p50"] == round(report["plan_to_wire_ms"]["p50"] / report["direct_plan_to_wire_ms"]["p50"], 2)
    assert report["tax_ratio"]["p99"] == round(report["plan_to_wire_ms"]["p99"] / report["direct_plan_to_wire_ms"]["p50"], 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # On the calm default every plan lands: 4 plans of each method, each counted under its own method.
    assert report["land_rate_by_method"] == {
        m: {"plans": 4, "landed": 4, "land_rate": 1.0, "not_landed": {}} for m in ("rpc", "jito_bundle", "tpu_direct")
    }


def test_bench_compare_runs_both_trees_in_turn_and_reports_their_ratios(tmp_path):
    """Only the shape: one pair of tiny runs, this tree against HEAD (figures are never asserted)."""
    from bench.compare import FIGURES, RATIOS

    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "bench", "--compare", "HEAD", "--pairs", "1", "--plans", "4", "--rate", "8",
         "--warmup", "0", "--slot-ms", "50", "--json", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert result["ref_commit"] == head
    assert "compare: pair 1/1, current" in done.stderr and "compare: pair 1/1, ref" in done.stderr
    [pair] = result["pairs"]
    for side in ("current", "ref"):
        assert set(pair[side]) == set(FIGURES)
        assert pair[side]["lost"] == 0 and pair[side]["double_landed"] == 0
        assert pair[side]["plan_to_wire_p50_ms"] > 0 and pair[side]["durable_cpu_ms_per_plan"] > 0
    assert set(pair["ratio"]) == set(RATIOS) == set(result["median_ratio"])
    assert pair["ratio"]["plan_to_wire_p50_ms"] == round(pair["current"]["plan_to_wire_p50_ms"] / pair["ref"]["plan_to_wire_p50_ms"], 3)
    assert [len(result["reports"][side]) for side in ("current", "ref")] == [1, 1]
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert str(tmp_path) not in worktrees, "the ref's worktree is removed afterwards"


def test_profile_folds_each_sample_by_its_task_not_by_the_bench_around_it():
    """The category table reads py-spy's folded stacks: a task's own frames decide (asyncio and
    uvloop alike), cross-cutting costs win over the component they run in, idle waits count nothing."""
    from bench.profile import EVENT_LOOP, OTHER, fold

    root = "main (worker/cli.py:9);run (bench/command.py:390);run (worker/event_loop.py:25)"
    asyncio_loop = "Runner.run (asyncio/runners.py:118);BaseEventLoop._run_once (asyncio/base_events.py:1922)"
    uvloop = "run (uvloop/__init__.py:96);Runner.run (asyncio/runners.py:118)"
    folded = "\n".join([
        f"{root};{asyncio_loop};Handle._run (asyncio/events.py:84);ExecutionActivities.confirm (activities/execution.py:120) 3",
        f"{root};{uvloop};ExecutionActivities.finish (activities/execution.py:170);info (logging/__init__.py:1489) 2",
        f"{root};{uvloop};_WorkflowWorker._handle_activation (temporalio/worker/_workflow.py:528) 5",
        f"{root};{uvloop} 7",
        f"{root};{asyncio_loop};EpollSelector.select (selectors.py:468) 11",
        "Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 13",
        f"{root};{uvloop};durable_phase (bench/command.py:150);somewhere (elsewhere.py:1) 1",
        f"{root};{uvloop};unknown (mystery.py:3) 4",
    ])  # fmt: skip
    counts = fold(folded)
    assert counts["local activity: confirm"] == 3
    assert counts["logging"] == 2, "a log call inside finish counts as logging"
    assert counts["SDK: workflow activation"] == 5
    assert counts[EVENT_LOOP] == 7
    assert counts["bench harness (publisher, result collector)"] == 1
    assert counts[OTHER] == 4
    assert sum(counts.values()) == 22, "idle waits (epoll, an idle pool thread) are not CPU"


def test_land_rate_by_method_counts_each_plan_once_under_its_method_with_the_reason_it_did_not_land():
    from bench.command import land_rate_by_method

    plans = [{"planId": f"p{i}", "executionMethod": m} for i, m in enumerate(["rpc", "jito_bundle", "jito_bundle", "jito_bundle", "tpu_direct"])]
    results = {
        "p0": {"status": "success"},
        "p1": {"status": "success"},
        "p2": {"status": "failed", "errorCode": "BLOCKHASH_EXPIRED"},
        "p4": {"status": "timeout"},
    }
    assert land_rate_by_method(plans, results) == {
        "rpc": {"plans": 1, "landed": 1, "land_rate": 1.0, "not_landed": {}},
        "jito_bundle": {"plans": 3, "landed": 1, "land_rate": 0.333, "not_landed": {"BLOCKHASH_EXPIRED": 1, "NO_RESULT": 1}},
        "tpu_direct": {"plans": 1, "landed": 0, "land_rate": 0.0, "not_landed": {"timeout": 1}},
    }
