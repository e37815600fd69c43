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
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["plans"] == report["results"] == report["success"] == 12, report
    assert report["lost"] == 0 and report["double_landed"] == 0
    assert report["direct_sent"] == 12 and report["direct_errors"] == 0
    for key in ("plan_to_wire_ms", "plan_to_result_ms", "direct_plan_to_wire_ms"):
        assert set(report[key]) == {"p50", "p90", "p99", "max"} and report[key]["p50"] > 0
    assert report["history_events_per_plan"] <= 20
    assert report["temporal_cpu_ms_per_plan"] > 0 and report["worker_cpu_ms_per_plan"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
