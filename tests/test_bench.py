"""The benchmark runs end to end and loses nothing (timings are reported, never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from solders.keypair import Keypair

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


ROUTE_KEYS = {"plans", "landed", "land_rate", "slots_to_land", "tip_lamports_per_landed", "plan_to_result_ms", "double_landed"}


def test_bench_routes_sends_the_same_plans_on_each_route_and_reads_landing_from_the_cluster(tmp_path):
    """`--routes rpc,tpu_direct` on the calm market: the JSON line's shape, the same plans on each route,
    the landing counted by the cluster's admin view (firstSeenSlot gives slots-to-land) and agreeing
    with the executor's results. Figures are never asserted."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "bench", "--routes", "rpc,tpu_direct", "--plans", "4", "--rate", "8",
         "--warmup", "2", "--slot-ms", "50", "--seed", "3", "--json", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"market", "plans", "routes", "ok"} <= set(report) and report["market"] == "calm" and report["plans"] == 4
    assert list(report["routes"]) == ["rpc", "tpu_direct"] and report["ok"] is True and report["seed"] == 3
    assert report["wallets"] == 32, "each route gets the 16 wallets of a one-method run"
    for route, row in report["routes"].items():
        assert ROUTE_KEYS <= set(row), route
        assert set(row["slots_to_land"]) == {"p50", "p90", "p99"} and set(row["plan_to_result_ms"]) == {"p50", "p99"}
        assert row["plans"] == row["results"] == 4 and row["excluded"] == 0 and row["double_landed"] == 0
        # The cluster's word and the executor's agree; on calm every plan lands.
        assert row["landed"] == row["result_landed"] == 4 and row["land_rate"] == 1.0, row
        assert sum(row["landed_via"].values()) == row["landed"]
        # slots-to-land comes from the wire view's firstSeenSlot: measured for every landed plan.
        assert all(isinstance(row["slots_to_land"][k], int) and row["slots_to_land"][k] >= 0 for k in ("p50", "p90", "p99")), row
        assert row["plan_to_result_ms"]["p50"] > 0 and row["tip_lamports_per_landed"] == 0


def test_routes_list_and_interleaving_rotate_so_no_route_is_always_first():
    from bench.routes import ROUTES, interleaved, parse_routes, route_plans
    from settings import CommandError

    assert parse_routes("compare") == ROUTES == ("rpc", "jito_bundle", "tpu_direct", "race")
    assert parse_routes("race, rpc,race") == ("race", "rpc")
    for bad in ("rpc,mixed", "", ","):
        with pytest.raises(CommandError):
            parse_routes(bad)
    assert interleaved(3, ("a", "b", "c")) == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"), (2, "c"), (2, "a"), (2, "b")]
    order = interleaved(8, ROUTES)
    assert [route for index, route in order[::4]] == list(ROUTES) * 2, "each route leads a plan equally often"
    plans = route_plans("run", 7, 5, ("rpc", "race"), str(Keypair().pubkey()))
    assert len({p["planId"] for p in plans}) == 10
    size = {(p["planId"].split("-")[2], p["executionMethod"]): p["routes"][0]["inAmount"] for p in plans}
    assert all(size[(i, "rpc")] == size[(i, "race")] for i, _ in size), "plan i has the same size on every route"
    assert [p["routes"][0]["inAmount"] for p in route_plans("x", 7, 5, ("rpc",), "11111111111111111111111111111111")] == [size[(str(i), "rpc")] for i in range(5)]
    assert [p["routes"][0]["inAmount"] for p in route_plans("x", 8, 5, ("rpc",), "11111111111111111111111111111111")] != [size[(str(i), "rpc")] for i in range(5)]


def test_route_percentiles_are_nearest_rank():
    from bench.routes import quantile, spread

    values = list(range(1, 101))
    assert spread(values) == {"p50": 50, "p90": 90, "p99": 99}
    assert spread([3]) == {"p50": 3, "p90": 3, "p99": 3}
    assert spread([]) == {"p50": None, "p90": None, "p99": None}
    assert quantile([0, 0, 1, 5], 0.5) == 0 and quantile([0, 0, 1, 5], 0.9) == 5
    assert spread([10.04, 20.0], ("p50", "p99"), 1) == {"p50": 10.0, "p99": 20.0}


def _row(plan: str, signature: str, first_slot: int | None, landed: int | None, via: str | None = None, err=None) -> dict:
    return {"signature": signature, "memos": [f"hft-executor plan {plan}"], "firstSeenSlot": first_slot, "landedSlot": landed, "err": err,
            "landedVia": {"channel": via, "region": None} if via else None}  # fmt: skip


def test_route_summary_counts_landing_by_the_cluster_and_leaves_never_sent_deadlines_out_of_the_land_rate():
    from bench.routes import summarize

    plans = [{"planId": f"p{i}", "executionMethod": m} for i, m in enumerate(["rpc"] * 4 + ["race"] * 3)]
    results = {
        "p0": {"status": "success", "executionCost": {"tipLamports": 0}},
        "p1": {"status": "failed", "errorCode": "DEADLINE_EXCEEDED"},  # never sent: left out of the denominator
        "p2": {"status": "failed", "errorCode": "DEADLINE_EXCEEDED"},  # sent, then the deadline: counted
        "p3": {"status": "failed", "errorCode": "BLOCKHASH_EXPIRED"},
        "p4": {"status": "success", "executionCost": {"tipLamports": 12_000}, "slotsToLand": 2},
        "p5": {"status": "success", "tipLamports": 10_000, "slotsToLand": 4},
        # p6: no result
    }
    rows = [
        _row("p0", "s0", 10, 12, "rpc"),
        _row("p2", "s2", 11, None),
        _row("p3", "s3", 11, None),
        _row("p4", "s4", 20, 21, "bundle"),
        _row("p5", "s5a", 30, None),  # a first signature the cluster saw and never landed ...
        _row("p5", "s5b", 32, 33, "tpu"),  # ... slots-to-land counts from the plan's first sight
        _row("p6", "s6", 40, 41, "rpc"),  # landed, though its result never came
        {"signature": "other", "memos": ["someone else"], "firstSeenSlot": 1, "landedSlot": 2, "err": None},
    ]
    counts = {f"p{i}": 1 for i in range(6)}
    ms = {"p0": 100.0, "p1": 200.0, "p2": 300.0, "p3": 400.0, "p4": 50.0, "p5": 70.0}
    report = summarize("hostile", 4, plans, results, counts, rows, ms)
    rpc, race = report["routes"]["rpc"], report["routes"]["race"]
    assert report["market"] == "hostile" and report["plans"] == 4
    assert rpc["plans"] == 4 and rpc["landed"] == 1 and rpc["excluded"] == 1 and rpc["land_rate"] == round(1 / 3, 4)
    assert rpc["not_landed"] == {"BLOCKHASH_EXPIRED": 1, "DEADLINE_EXCEEDED": 2}
    assert rpc["slots_to_land"] == {"p50": 2, "p90": 2, "p99": 2} and rpc["tip_lamports_per_landed"] == 0
    assert rpc["plan_to_result_ms"] == {"p50": 200.0, "p99": 400.0}
    assert race["plans"] == 3 and race["landed"] == 3 and race["land_rate"] == 1.0 and race["results"] == 2
    assert race["slots_to_land"] == {"p50": 1, "p90": 3, "p99": 3}, "p4 1, p5 33 - 30, p6 1"
    assert race["tip_lamports_per_landed"] == round((12_000 + 10_000 + 0) / 3, 1)
    assert race["executor_slots_to_land"] == {"p50": 2, "p90": 4, "p99": 4}
    assert race["landed_via"] == {"bundle": 1, "rpc": 1, "tpu": 1}
    assert report["ok"] is False, "p6 has no result"
    assert summarize("calm", 4, plans, results, counts | {"p6": 1}, rows, ms)["ok"] is True
    assert summarize("calm", 4, plans, results, counts | {"p6": 1, "p0": 2}, rows, ms)["ok"] is False, "a plan with two results"
    twice = rows + [_row("p0", "s0b", 10, 13, "tpu")]  # a second signature of p0 landed too
    doubled = summarize("calm", 4, plans, results, counts | {"p6": 1}, twice, ms)
    assert doubled["routes"]["rpc"]["double_landed"] == 1 and doubled["ok"] is False


def test_route_land_rate_is_none_when_no_plan_could_land():
    from bench.routes import summarize

    plans = [{"planId": "p0", "executionMethod": "jito_bundle"}]
    report = summarize("busy", 1, plans, {"p0": {"status": "failed", "errorCode": "DEADLINE_EXCEEDED"}}, {"p0": 1}, [], {})
    row = report["routes"]["jito_bundle"]
    assert row["excluded"] == 1 and row["land_rate"] is None and row["landed"] == 0 and row["tip_lamports_per_landed"] is None


@pytest.mark.parametrize(
    "argv",
    [["--routes", "rpc,bogus"], ["--routes", "compare", "--method", "rpc"], ["--routes", "compare", "--plot", "x.png"], ["--routes", "rpc", "--rate", "0"]],
)
def test_bench_routes_refuses_what_it_cannot_run_before_starting_anything(argv):
    import argparse

    from bench.command import add_arguments, run
    from settings import CommandError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(CommandError):
        run(parser.parse_args(argv))
