"""The seed's metrics, as Prometheus scrapes them."""
from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from localnet.cluster import ClusterConfig, ClusterThread
from localnet.regions import RegionSettings
from venue.jito import JitoClient, JitoUnavailable
from venue.health import BreakerState, HealthBoard, Outcome
from worker.metrics import ExecutorMetrics
from devtools.services import free_port
from workflows.events import ErrorCode, ExecutionCost, ExecutionResultEvent, ExecutionStatus, StageTimings


def result(status: ExecutionStatus, method: str, net: float | None, code: ErrorCode | None = None) -> ExecutionResultEvent:
    return ExecutionResultEvent(
        execution_id="plan-x", plan_id="x", opportunity_id="o", status=status, expected_profit=1.0, execution_cost=ExecutionCost(),
        net_profit=net, latency=420.0, execution_method=method, error_code=code, timestamp=1,
        stage_timings=StageTimings(lease=0.3, build=0.5, sign=0.2, submit=1.5, confirm=400.0),
    )  # fmt: skip


def test_results_count_by_status_and_method_with_latency_profit_and_stages():
    metrics = ExecutorMetrics()
    metrics.record(result(ExecutionStatus.success, "rpc", 0.75))
    metrics.record(result(ExecutionStatus.success, "rpc", -0.25))
    metrics.record(result(ExecutionStatus.timeout, "jito_bundle", None, ErrorCode.BLOCKHASH_EXPIRED))
    sample = metrics.registry.get_sample_value
    assert sample("executor_executions_total", {"status": "success", "method": "rpc"}) == 2
    assert sample("executor_executions_total", {"status": "timeout", "method": "jito_bundle"}) == 1
    assert sample("executor_execution_duration_ms_count", {"method": "rpc"}) == 2
    assert sample("executor_execution_duration_ms_sum", {"method": "rpc"}) == 840.0
    assert sample("executor_profit_usd_total") == 0.5  # net profit, losses included
    assert sample("executor_errors_total", {"code": "BLOCKHASH_EXPIRED"}) == 1
    assert sample("executor_stage_duration_ms_count", {"stage": "submit"}) == 3


def test_metrics_endpoint_serves_them():
    metrics = ExecutorMetrics()
    metrics.record(result(ExecutionStatus.success, "jito_bundle", 1.0))
    port = free_port()
    server = metrics.serve(port)
    assert server.server_address[0] == "127.0.0.1", "on loopback unless METRICS_HOST says otherwise"
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'executor_executions_total{method="jito_bundle",status="success"} 1.0' in body
    assert "executor_execution_duration_ms_bucket" in body


# --- landing analytics (issue 23) -----------------------------------------------------------------

def landing(method: str, *, status=ExecutionStatus.success, signature: str | None = "sig", block_slot: int | None = 110, code: ErrorCode | None = None,
            landed_via: str | None = None, routes: list[str] | None = None, slots: int | None = None, tip: int = 0) -> ExecutionResultEvent:
    return ExecutionResultEvent(
        execution_id="plan-x", plan_id="x", opportunity_id="o", status=status, signature=signature, block_slot=block_slot,
        expected_profit=1.0, execution_cost=ExecutionCost(tip_lamports=tip), latency=420.0, execution_method=method,
        error_code=code, timestamp=1, send_slot=100 if slots is not None else None, slots_to_land=slots, landed_via=landed_via, routes=routes,
    )  # fmt: skip


def test_land_rate_by_method_and_route_slots_to_land_and_tip_per_landed_plan():
    metrics = ExecutorMetrics()
    metrics.add_regions(["fra", "ams"])
    race_routes = ["rpc", "tpu", "jito_transaction:fra", "bundle:fra", "bundle:ams"]
    metrics.record(landing("race", landed_via="bundle:fra", routes=race_routes, slots=2, tip=10_000))
    metrics.record(landing("race", landed_via=None, routes=race_routes, slots=5, tip=12_000))  # landed, route not known
    metrics.record(landing("race", status=ExecutionStatus.timeout, block_slot=None, code=ErrorCode.BLOCKHASH_EXPIRED, routes=race_routes))
    metrics.record(landing("jito_bundle", landed_via="bundle:ams", routes=["bundle:ams"], slots=1, tip=5_000))
    metrics.record(landing("jito_bundle", status=ExecutionStatus.timeout, block_slot=None, code=ErrorCode.BLOCKHASH_EXPIRED, routes=["bundle:ams"]))
    metrics.record(landing("rpc", status=ExecutionStatus.failed, code=ErrorCode.TX_FAILED, slots=0))  # landed with an on-chain error
    metrics.record(landing("rpc", status=ExecutionStatus.failed, signature=None, block_slot=None, code=ErrorCode.HALTED))  # nothing left
    sample = metrics.registry.get_sample_value

    sent = {method: sample("executor_plans_sent_total", {"method": method}) for method in ("race", "jito_bundle", "rpc", "tpu_direct")}
    assert sent == {"race": 3, "jito_bundle": 2, "rpc": 1, "tpu_direct": 0}
    landed = lambda method, route: sample("executor_plans_landed_total", {"method": method, "route": route})  # noqa: E731
    assert landed("race", "bundle:fra") == 1 and landed("race", "unknown") == 1 and landed("race", "bundle:ams") == 0
    assert landed("jito_bundle", "bundle:ams") == 1 and landed("rpc", "unknown") == 1
    # by route: the plans that left on it, and of those the ones it landed
    routed = lambda method, route: sample("executor_plans_routed_total", {"method": method, "route": route})  # noqa: E731
    assert [routed("race", route) for route in race_routes] == [3, 3, 3, 3, 3]
    assert routed("jito_bundle", "bundle:ams") == 2 and routed("rpc", "rpc") == 0  # no routes on the result: not counted by route
    # slots to land, by method
    assert sample("executor_slots_to_land_count", {"method": "race"}) == 2
    assert sample("executor_slots_to_land_sum", {"method": "race"}) == 7
    assert sample("executor_slots_to_land_bucket", {"method": "race", "le": "2.0"}) == 1
    assert sample("executor_slots_to_land_bucket", {"method": "rpc", "le": "0.0"}) == 1
    # tip lamports paid by landed plans (the expired plan paid nothing); with the landed count, the mean
    tip = lambda method, route: sample("executor_landed_tip_lamports_total", {"method": method, "route": route})  # noqa: E731
    assert tip("race", "bundle:fra") == 10_000 and tip("race", "unknown") == 12_000 and tip("jito_bundle", "bundle:ams") == 5_000
    assert sample("executor_errors_total", {"code": "BLOCKHASH_EXPIRED"}) == 2  # the seed's counters still count every result


def test_labels_stay_bounded_unknown_methods_routes_and_regions_read_other():
    metrics = ExecutorMetrics()
    metrics.add_regions(["fra"])
    metrics.record(landing("carrier_pigeon", landed_via="bundle:mars", routes=["bundle:mars", "jito_transaction:x" * 40, "smoke signals", "bundle:fra"]))
    sample = metrics.registry.get_sample_value
    assert sample("executor_plans_sent_total", {"method": "other"}) == 1
    assert sample("executor_plans_landed_total", {"method": "other", "route": "bundle:other"}) == 1
    for route in ("bundle:other", "jito_transaction:other", "other", "bundle:fra"):
        assert sample("executor_plans_routed_total", {"method": "other", "route": route}) == 1, route
    labels = {tuple(sorted(s.labels.items())) for family in metrics.registry.collect() if family.name.startswith("executor_plans") for s in family.samples}
    assert not any("mars" in value or "pigeon" in value or "smoke" in value for label in labels for _, value in label)


def test_every_method_series_is_there_from_the_start():
    """rate() sees a counter's first increment only if the series existed before it."""
    sample = ExecutorMetrics().registry.get_sample_value
    for method in ("jito_bundle", "tpu_direct", "rpc", "race"):
        assert sample("executor_plans_sent_total", {"method": method}) == 0
        assert sample("executor_plans_landed_total", {"method": method, "route": "unknown"}) == 0
        assert sample("executor_slots_to_land_count", {"method": method}) == 0
    metrics = ExecutorMetrics()
    metrics.add_regions(["fra"])
    sample = metrics.registry.get_sample_value
    for method in ("jito_bundle", "race"):  # the methods that go through a region
        for route in ("bundle:fra", "jito_transaction:fra"):
            assert sample("executor_plans_routed_total", {"method": method, "route": route}) == 0
            assert sample("executor_plans_landed_total", {"method": method, "route": route}) == 0
    assert sample("executor_plans_routed_total", {"method": "rpc", "route": "bundle:fra"}) is None


# --- endpoint health (venue/health.py), read at scrape time -----------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_endpoint_health_is_read_from_the_board_at_each_scrape():
    clock = FakeClock()
    board = HealthBoard({"fra": "https://frankfurt.mainnet.block-engine.jito.wtf", "ams": "https://amsterdam.mainnet.block-engine.jito.wtf"}, failures=2, open_s=60.0, clock=clock)
    metrics = ExecutorMetrics()
    metrics.watch_endpoints(board)
    sample = metrics.registry.get_sample_value
    state = lambda name: sample("executor_endpoint_breaker_state", {"endpoint": name})  # noqa: E731
    assert state("fra") == 0 and state("ams") == 0
    assert sample("executor_endpoint_latency_ewma_ms", {"endpoint": "fra"}) is None  # not measured yet

    board["ams"].record_success(40.0)
    board["ams"].record_success(60.0)  # EWMA 0.2: 40 + 0.2 * 20
    board["ams"].record_failure(Outcome.RATE_LIMITED)
    board["fra"].record_failure(Outcome.UNAVAILABLE)
    board["fra"].record_failure(Outcome.UNAVAILABLE)  # the second consecutive failure trips it
    assert state("fra") == 2 and state("ams") == 0
    assert sample("executor_endpoint_latency_ewma_ms", {"endpoint": "ams"}) == 44.0
    assert sample("executor_endpoint_outcomes_total", {"endpoint": "fra", "outcome": "unavailable"}) == 2
    assert sample("executor_endpoint_outcomes_total", {"endpoint": "ams", "outcome": "succeeded"}) == 2
    assert sample("executor_endpoint_outcomes_total", {"endpoint": "ams", "outcome": "rate_limited"}) == 1

    clock.now += 60.0  # open time over: half-open, as the board would say
    assert state("fra") == 1
    assert board["fra"].breaker._state is BreakerState.OPEN, "the scrape read it without stepping it (the event loop's business)"
    assert board["fra"].breaker.allow(), "the probe is still free for the send path"
    board["fra"].record_success(30.0)
    assert state("fra") == 0
    # the board's names are the configured regions
    metrics.record(landing("race", landed_via="bundle:fra", routes=["bundle:fra"]))
    assert sample("executor_plans_landed_total", {"method": "race", "route": "bundle:fra"}) == 1


def test_endpoint_labels_drop_what_could_carry_a_credential():
    board = HealthBoard(["https://user:secret@ny.mainnet.block-engine.jito.wtf/api/v1/?uuid=abc#x"], clock=FakeClock())
    metrics = ExecutorMetrics()
    metrics.watch_endpoints(board, regions=["nyc"])
    names = {s.labels["endpoint"] for family in metrics.registry.collect() if family.name.startswith("executor_endpoint") for s in family.samples}
    assert names == {"https://ny.mainnet.block-engine.jito.wtf/api/v1"}
    assert metrics.regions == {"nyc"}


def test_endpoint_families_are_declared_before_any_board():
    """The panels' metrics are on /metrics (empty) before the worker has a board to show."""
    from prometheus_client import generate_latest

    page = generate_latest(ExecutorMetrics().registry).decode()
    for line in ("# TYPE executor_endpoint_breaker_state gauge", "# TYPE executor_endpoint_latency_ewma_ms gauge", "# TYPE executor_endpoint_outcomes_total counter"):
        assert line in page


@pytest.fixture(scope="module")
def two_regions():
    """The local cluster with two block-engine regions: ams up (no rate limit: not this test's point), fra refusing connections."""
    regions = {"ams": RegionSettings(rate_limit=None), "fra": RegionSettings(down="refuse")}
    with ClusterThread(ClusterConfig.auto_ports(slot_ms=40, regions=regions)) as running:
        yield running


UNKNOWN_BUNDLE = "ab" * 32  # a well-formed bundle id no one sent: a read with an answer


async def test_a_region_down_reads_open_on_the_served_page_and_the_live_one_closed(two_regions):
    """The real JitoClient through a HealthBoard against the cluster's regions, read by scraping /metrics."""
    urls = two_regions.endpoints()["regions"]
    board = HealthBoard({"fra": urls["fra"], "ams": urls["ams"]}, failures=2, open_s=600.0, rate=50.0)  # fra first: tried first
    clients = {name: JitoClient(url, timeout_s=2.0) for name, url in urls.items()}
    metrics = ExecutorMetrics()
    metrics.watch_endpoints(board)
    port = free_port()
    server = metrics.serve(port)
    try:
        for _ in range(2):
            with pytest.raises(JitoUnavailable):
                await board.call(lambda endpoint: clients[endpoint.name].inflight_statuses([UNKNOWN_BUNDLE]))
        assert await board.call(lambda endpoint: clients[endpoint.name].inflight_statuses([UNKNOWN_BUNDLE]))  # failed over to ams
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        assert 'executor_endpoint_breaker_state{endpoint="fra"} 2.0' in page
        assert 'executor_endpoint_breaker_state{endpoint="ams"} 0.0' in page
        assert 'executor_endpoint_outcomes_total{endpoint="fra",outcome="unavailable"} 2.0' in page
        assert 'executor_endpoint_outcomes_total{endpoint="ams",outcome="succeeded"} 1.0' in page
        assert re.search(r'^executor_endpoint_latency_ewma_ms\{endpoint="ams"\} [0-9.e+-]+$', page, re.MULTILINE)
        assert 'executor_endpoint_latency_ewma_ms{endpoint="fra"}' not in page  # never answered
    finally:
        server.shutdown()
        server.server_close()
        for client in clients.values():
            await client.close()
