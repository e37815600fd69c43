"""The Grafana dashboards in deploy/grafana/dashboards/ query only metrics that exist.

A panel whose metric is misspelled, renamed or never exported shows "No data" without an error, so a
wrong name would go unnoticed until someone needs the panel. Here every metric name in every panel's
PromQL must be on /metrics after a `hft-executor dev --demo` run: the executor's own listener
(METRICS_PORT) and the Temporal SDK's (TEMPORAL_METRICS_PORT), the two jobs deploy/prometheus.yml scrapes.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.stack import ROOT

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Functions are told apart by the "(" after them; these words are PromQL's own and never metric names.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio", "atan2", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not those written as {__name__="..."})."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations ($__rate_interval too)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or name in PROMQL_WORDS:
            continue  # a function or an aggregation
        names.add(name)
    return names


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_queries(path: Path) -> dict[str, list[str]]:
    """Panel title -> its PromQL expressions (templating queries under "variable <name>")."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    queries = {}
    for panel in _panels(dashboard.get("panels", [])):
        expressions = [target["expr"] for target in panel.get("targets", []) if target.get("expr")]
        if expressions:
            queries[panel.get("title") or f"panel {panel.get('id')}"] = expressions
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and query:
            queries[f"variable {variable['name']}"] = [re.sub(r"^\w+\((.*)\)$", r"\1", query.strip())]  # label_values(expr, label)
    return queries


def exported(exposition: str) -> tuple[set[str], set[str]]:
    """(every name on the page: families' TYPE names and sample names, histogram families)."""
    names, histograms = set(), set()
    for line in exposition.splitlines():
        if match := re.match(r"# TYPE (\S+) (\S+)", line):
            names.add(match.group(1))
            if match.group(2) == "histogram":
                histograms.add(match.group(1))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names, histograms


def missing(queried: set[str], exposition: str) -> set[str]:
    """Queried names not on the page. A histogram's _bucket, _sum and _count count as its family's."""
    names, histograms = exported(exposition)

    def found(name: str) -> bool:
        if name in names:
            return True
        return any(name.endswith(suffix) and name.removesuffix(suffix) in histograms for suffix in HISTOGRAM_SUFFIXES)

    return {name for name in queried if not found(name)}


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def demo_metrics():
    """`dev --demo 6` (rpc, jito_bundle, tpu_direct and race plans) left running once its summary is out; yields
    a function scraping both metrics listeners. Ctrl-C stops it at the end, as a user would."""
    with tempfile.TemporaryDirectory() as data_dir:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "dev", "--ports", "auto", "--demo", "6", "--json", "--slot-ms", "200", "--data-dir", data_dir],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            endpoints = json.loads(process.stdout.readline() or "null")
            assert endpoints, process.stderr.read()[-3000:]
            summary = json.loads(process.stdout.readline() or "null")
            # Every plan told; which ones landed is not this test's point (on a loaded box a plan
            # may time out, seen once: 4 of 6). A panel whose metric needs a landing still fails below.
            assert summary and summary["results"] == 6 and summary["success"] >= 1, (summary, process.stderr.read()[-3000:] if not summary else "")
            assert endpoints["metrics"] and endpoints["temporalSdkMetrics"], endpoints
            yield lambda: _scrape(endpoints["metrics"]) + _scrape(endpoints["temporalSdkMetrics"])
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0, process.stderr.read()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(executor_execution_duration_ms_bucket{method!="x"}[$__rate_interval])))'
        ' / on (method) group_left sum without (instance) (rate(executor_executions_total{status=~"succ.*"}[5m] offset 1h))'
        " + max(executor_halted) * 1e3 + count(up == bool 1) and vector(1)"
    )
    assert metric_names(expr) == {"executor_execution_duration_ms_bucket", "executor_executions_total", "executor_halted", "up"}


def test_the_dashboards_have_queries() -> None:
    assert DASHBOARDS, "no dashboard in deploy/grafana/dashboards"
    for path in DASHBOARDS:
        queries = dashboard_queries(path)
        assert queries, f"{path.name} has no PromQL"
        for panel, expressions in queries.items():
            assert all(metric_names(expr) for expr in expressions), f"{path.name}, {panel}: an expression selects no metric"


def test_every_metric_a_dashboard_queries_is_exported_after_a_demo(demo_metrics) -> None:
    queried = {(path.name, panel): set().union(*map(metric_names, expressions)) for path in DASHBOARDS for panel, expressions in dashboard_queries(path).items()}
    names = set().union(*queried.values())
    # The SDK exports a metric from its first recording on: the last workflows may still be completing.
    deadline = time.monotonic() + 15
    while (absent := missing(names, exposition := demo_metrics())) and time.monotonic() < deadline:
        time.sleep(0.5)
    report = {f"{dashboard}: {panel}": sorted(panel_names & absent) for (dashboard, panel), panel_names in queried.items() if panel_names & absent}
    assert not absent, f"queried but not exported: {json.dumps(report, indent=1)}"

    # The check can fail: a name nobody exports, and a histogram suffix on a family that is not a histogram.
    assert missing({"executor_made_up_total", "executor_halted_bucket", "executor_stage_duration_ms_count"}, exposition) == {
        "executor_made_up_total", "executor_halted_bucket",
    }  # fmt: skip


def test_every_executor_metric_has_a_panel(demo_metrics) -> None:
    """The other way round: each of the executor's metric families is on a dashboard."""
    queried = {name for path in DASHBOARDS for expressions in dashboard_queries(path).values() for expr in expressions for name in metric_names(expr)}
    names, histograms = exported(demo_metrics())
    families = {name for name in names if name.startswith("executor_") and not name.endswith("_created")}
    families = {name for name in families if not any(name.endswith(s) and name.removesuffix(s) in histograms for s in HISTOGRAM_SUFFIXES)}
    assert families, "no executor metric on /metrics"
    unused = {family for family in families if not ({family} | {family + suffix for suffix in HISTOGRAM_SUFFIXES}) & queried}
    assert not unused, f"executor metrics no panel shows: {sorted(unused)}"


# Issue 23's landing analytics and endpoint health (worker/metrics.py): each panel and what it reads.
LANDING_PANELS = {
    "Land rate by method": {"executor_plans_landed_total", "executor_plans_sent_total"},
    "Land rate by route": {"executor_plans_landed_total", "executor_plans_routed_total"},
    "Slots to land p50 / p90 by method": {"executor_slots_to_land_bucket"},
    "Tip lamports per landed plan": {"executor_landed_tip_lamports_total", "executor_plans_landed_total"},
    "Endpoint breaker state": {"executor_endpoint_breaker_state"},
    "Endpoint latency (EWMA)": {"executor_endpoint_latency_ewma_ms"},
    "Endpoint outcomes": {"executor_endpoint_outcomes_total"},
}


def _dashboard(name: str = "hft-executor.json") -> dict:
    return json.loads((ROOT / "deploy" / "grafana" / "dashboards" / name).read_text(encoding="utf-8"))


def test_the_landing_panels_read_the_landing_metrics() -> None:
    queries = dashboard_queries(ROOT / "deploy" / "grafana" / "dashboards" / "hft-executor.json")
    for title, names in LANDING_PANELS.items():
        assert title in queries, f"no panel {title!r}"
        assert set().union(*map(metric_names, queries[title])) == names, title


def test_the_breaker_panel_names_the_states_as_the_metric_numbers_them() -> None:
    from venue.health import BreakerState
    from worker.metrics import BREAKER_VALUES

    panel = next(p for p in _panels(_dashboard()["panels"]) if p.get("title") == "Endpoint breaker state")
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert {int(value): option["text"] for value, option in mapping["options"].items()} == {number: state.value for state, number in BREAKER_VALUES.items()}
    assert BREAKER_VALUES == {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def test_no_two_panels_overlap() -> None:
    """A panel inserted without moving the ones below lands on top of them."""
    for path in DASHBOARDS:
        cells: dict[tuple[int, int], str] = {}
        for panel in _panels(json.loads(path.read_text(encoding="utf-8"))["panels"]):
            grid = panel["gridPos"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{path.name}: {panel.get('title')!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = panel.get("title")
