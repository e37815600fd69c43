"""Prometheus metrics on METRICS_PORT, named as in the seed, plus stage latencies.

The Temporal SDK's own metrics (task latencies, slots, polls) are served by its runtime on
TEMPORAL_METRICS_PORT, a separate listener because the SDK's exporter is in Rust.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from workflows.events import ExecutionResultEvent

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
STAGES = ("lease", "build", "sign", "submit", "confirm")


class ExecutorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.executions = Counter("executor_executions", "Plans ended, by result status and method", ["status", "method"], registry=self.registry)
        self.duration = Histogram("executor_execution_duration_ms", "Workflow start to result, ms", ["method"], buckets=LATENCY_BUCKETS_MS, registry=self.registry)
        # A gauge, not a counter: net profit can be negative, and the seed's name is kept.
        self.profit = Gauge("executor_profit_usd_total", "Cumulative realized net profit, USD", registry=self.registry)
        self.stage = Histogram("executor_stage_duration_ms", "Time in each stage, ms", ["stage"], buckets=LATENCY_BUCKETS_MS, registry=self.registry)
        self.errors = Counter("executor_errors", "Failed and timed-out plans by error code", ["code"], registry=self.registry)
        self.halted = Gauge("executor_halted", "1 while the kill switch is on", registry=self.registry)
        self.plans_rejected = Counter("executor_plans_rejected", "Plans refused by the bridge (invalid)", ["code"], registry=self.registry)
        # Alert on any rise: a result is waiting for NATS (it is retried until it is out, never dropped).
        self.publish_failures = Counter("executor_result_publish_failures", "Failed attempts to store or publish a result", registry=self.registry)
        # A connection gone for good ends the process (worker/main.py ConnectionLost): counted for the
        # scrape that may still see it; after the restart, process_start_time_seconds moves, which
        # `changes(process_start_time_seconds[1h])` counts whatever the scrape saw.
        self.connections_lost = Counter("executor_connections_lost", "Connections gone for good (the worker exits to be restarted), by service", ["service"], registry=self.registry)
        ProcessCollector(registry=self.registry)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """On loopback unless METRICS_HOST says otherwise: wallet addresses and flow are not for the network."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def record(self, result: ExecutionResultEvent) -> None:
        self.executions.labels(result.status.value, result.execution_method).inc()
        self.duration.labels(result.execution_method).observe(result.latency)
        if result.error_code is not None:
            self.errors.labels(result.error_code.value).inc()
        if result.net_profit is not None:
            self.profit.inc(result.net_profit)
        if result.stage_timings is not None:
            for stage in STAGES:
                value = getattr(result.stage_timings, stage)
                if value is not None:
                    self.stage.labels(stage).observe(value)
