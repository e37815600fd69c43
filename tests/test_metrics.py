"""The seed's metrics, as Prometheus scrapes them."""
from __future__ import annotations

import urllib.request

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
