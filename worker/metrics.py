"""Prometheus metrics on METRICS_PORT, named as in the seed, plus stage latencies, landing
analytics and endpoint health (issue 23).

The Temporal SDK's own metrics (task latencies, slots, polls) are served by its runtime on
TEMPORAL_METRICS_PORT, a separate listener because the SDK's exporter is in Rust.

Landing analytics, per published result (`record`): a plan is *sent* when its result has a
signature (something may have left), *landed* when it has a `blockSlot` (in a block, with or
without an on-chain error: `TX_FAILED` landed and paid its fee). Land rate by method is
landed / sent; by route, plans landed via a route / plans whose transaction left on it (a route
names no method: `rpc`, `tpu`, `jito_transaction:<region>`, `bundle:<region>`; docs/operations.md,
Metrics). Every label value comes from a finite set: the methods, the fixed routes and the configured
regions; anything else reads `other` (a route of a known kind to an unconfigured region reads
`<kind>:other`), and a landing whose route is not known reads `unknown`.
"""
from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from venue.health import BreakerState, HealthBoard
from workflows.events import TIPPED_METHODS, ExecutionMethod, ExecutionResultEvent

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
STAGES = ("lease", "build", "sign", "submit", "confirm")
# Slots from the first send to the landing slot. 150: a blockhash is valid for 150 blocks (agave
# `MAX_PROCESSING_AGE`, as localnet/ledger.py), so past it only skipped slots stretch the wait (+Inf).
SLOT_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 150)

METHODS = tuple(method.value for method in ExecutionMethod)
OTHER = "other"
UNKNOWN = "unknown"  # landed, by a route nobody could tell
FIXED_ROUTES = ("rpc", "tpu")
REGION_ROUTES = ("jito_transaction", "bundle")  # `<kind>:<region>`
# executor_endpoint_breaker_state: ordered by how far from usable
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def route_label(route: str | None, regions: Iterable[str] = ()) -> str:
    """A route as a label value: `unknown` for none, `other` for a string of no known shape, and
    `<kind>:other` for a region that is not configured."""
    if route is None:
        return UNKNOWN
    if route in FIXED_ROUTES:
        return route
    kind, colon, region = route.partition(":")
    if colon and kind in REGION_ROUTES:
        return route if region in regions else f"{kind}:{OTHER}"
    return OTHER


def endpoint_label(name: str) -> str:
    """An endpoint's name as a label value: a URL loses its user info, query and fragment (where a
    credential could ride), the rest is kept."""
    if "://" not in name:
        return name
    parts = urlsplit(name)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.rstrip('/')}"


class EndpointHealthCollector:
    """Every watched `HealthBoard`'s endpoints, read at scrape time: breaker state (0 closed,
    1 half-open, 2 open), latency EWMA (ms; absent until the first answer) and outcome counts.

    The scrape runs on the metrics server's thread, so the breaker is read with `peek()`, which
    takes no step (stepping it here could race the event loop's own)."""

    def __init__(self) -> None:
        self.boards: list[HealthBoard] = []

    def watch(self, board: HealthBoard) -> None:
        if all(board is not watched for watched in self.boards):
            self.boards.append(board)

    def describe(self):
        return []  # no samples at registration: the boards come later

    def collect(self):
        state = GaugeMetricFamily("executor_endpoint_breaker_state", "Endpoint circuit breaker: 0 closed, 1 half-open, 2 open", labels=["endpoint"])
        latency = GaugeMetricFamily("executor_endpoint_latency_ewma_ms", "Endpoint answer latency, EWMA, ms", labels=["endpoint"])
        outcomes = CounterMetricFamily("executor_endpoint_outcomes", "Endpoint requests by outcome", labels=["endpoint", "outcome"])
        for board in list(self.boards):
            for name, endpoint in list(board.endpoints.items()):
                label = endpoint_label(name)
                state.add_metric([label], BREAKER_VALUES[endpoint.breaker.peek()])
                if endpoint.latency_ms is not None:
                    latency.add_metric([label], endpoint.latency_ms)
                for outcome, count in list(endpoint.counts.items()):
                    outcomes.add_metric([label, outcome.replace(" ", "_")], count)
        yield state
        yield latency
        yield outcomes


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
        # Landing analytics (module docstring)
        self.regions: frozenset[str] = frozenset()
        self.plans_sent = Counter("executor_plans_sent", "Plans whose transaction may have left (the result has a signature), by method", ["method"], registry=self.registry)
        self.plans_routed = Counter("executor_plans_routed", "Sent plans by each route their transaction left on", ["method", "route"], registry=self.registry)
        self.plans_landed = Counter("executor_plans_landed", "Plans whose transaction landed (on-chain error or not), by method and the route that landed it", ["method", "route"], registry=self.registry)
        self.slots_to_land = Histogram("executor_slots_to_land", "Slots from the first send to the landing slot, by method", ["method"], buckets=SLOT_BUCKETS, registry=self.registry)
        self.landed_tip = Counter("executor_landed_tip_lamports", "Jito tip lamports paid by landed plans, by method and the route that landed them", ["method", "route"], registry=self.registry)
        # The series a query needs from the start (a counter born at its first increment hides that
        # increment from rate()); the region routes are born with the regions (`add_regions`).
        for method in METHODS:
            self.plans_sent.labels(method)
            self.slots_to_land.labels(method)
            self.plans_landed.labels(method, UNKNOWN)
            self.landed_tip.labels(method, UNKNOWN)
            for route in FIXED_ROUTES:
                self.plans_routed.labels(method, route)
        self.endpoint_health = EndpointHealthCollector()
        self.registry.register(self.endpoint_health)
        ProcessCollector(registry=self.registry)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """On loopback unless METRICS_HOST says otherwise: wallet addresses and flow are not for the network."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def add_regions(self, regions: Iterable[str]) -> None:
        """The configured block-engine regions: the only ones a route label names. Their routes'
        series start at 0 for the methods that use them (those carrying a Jito tip)."""
        new = frozenset(regions) - self.regions
        self.regions = self.regions | new
        for region in sorted(new):
            for kind in REGION_ROUTES:
                route = f"{kind}:{region}"
                for method in sorted(m.value for m in TIPPED_METHODS):
                    self.plans_routed.labels(method, route)
                    self.plans_landed.labels(method, route)
                    self.landed_tip.labels(method, route)

    def watch_endpoints(self, board: HealthBoard, regions: Iterable[str] | None = None) -> None:
        """Export `board`'s endpoint health, read at each scrape, and take its endpoint names as the
        configured regions (or `regions`, where the board is named otherwise, e.g. by URL)."""
        self.add_regions(board.endpoints if regions is None else regions)
        self.endpoint_health.watch(board)

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
        self._record_landing(result)

    def _record_landing(self, result: ExecutionResultEvent) -> None:
        if result.signature is None:
            return  # nothing left: refused, halted or stopped before the send
        method = method_label(result.execution_method)
        self.plans_sent.labels(method).inc()
        landed = result.block_slot is not None
        via = route_label(result.landed_via, self.regions)
        if result.routes:
            routes = {route_label(route, self.regions) for route in result.routes}
            if landed and via != UNKNOWN:
                routes.add(via)  # it left on the route that landed it, listed or not
            for route in routes:
                self.plans_routed.labels(method, route).inc()
        if not landed:
            return
        self.plans_landed.labels(method, via).inc()
        self.landed_tip.labels(method, via).inc(max(0, result.execution_cost.tip_lamports))
        if result.slots_to_land is not None:
            self.slots_to_land.labels(method).observe(max(0, result.slots_to_land))
