"""Prometheus metrics. Counters are bumped once per request by the access middleware;
fleet state (breakers, in-flight, workers) is read only when ``/metrics`` is scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
QUALITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

FleetSnapshot = Callable[[], dict[str, Any]]


class FleetCollector(Collector):
    """Reads the fleet's live state at scrape time."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.snapshot()
        breaker = GaugeMetricFamily("modelyard_circuit_breaker_state", "0 closed, 1 half-open, 2 open", labels=["deployment"])
        for name, info in state.get("breakers", {}).items():
            breaker.add_metric([name], BREAKER_STATES.get(str(info["state"]), 0))
        yield breaker
        inflight = GaugeMetricFamily("modelyard_inflight_requests", "requests in flight per deployment", labels=["deployment"])
        ready = GaugeMetricFamily("modelyard_deployment_ready", "1 when the deployment can serve", labels=["deployment"])
        workers = GaugeMetricFamily("modelyard_workers", "local worker processes by state", labels=["deployment", "state"])
        for d in state.get("deployments", []):
            inflight.add_metric([d["deployment"]], d["outstanding"])
            ready.add_metric([d["deployment"]], 1 if d["ready"] else 0)
            counts: dict[str, int] = {}
            for w in d["workers"]:
                key = "busy" if w.get("busy") else str(w["state"])
                counts[key] = counts.get(key, 0) + 1
            for key, n in counts.items():
                workers.add_metric([d["deployment"], key], n)
        yield from (inflight, ready, workers)
        depth = GaugeMetricFamily("modelyard_queue_depth", "requests waiting per deployment and class", labels=["deployment", "workload"])
        running = GaugeMetricFamily("modelyard_scheduler_running", "requests holding a slot per deployment", labels=["deployment"])
        for name, info in state.get("scheduler", {}).items():
            running.add_metric([name], info["running"])
            for workload, n in info["queued"].items():
                depth.add_metric([name, workload], n)
        yield from (depth, running)
        budget = GaugeMetricFamily("modelyard_budget_remaining_usd", "budget left per tenant and period", labels=["tenant", "period"])
        for tenant, periods in state.get("budgets", {}).items():
            for period, left in periods.items():
                budget.add_metric([tenant, period], left)
        yield budget


class Children:
    """A labelled metric's children by label values, each looked up in prometheus_client once.

    Its ``labels()`` validates the values, takes a lock and builds a key on every
    call; the access middleware bumps several metrics per request, so this is one
    dict lookup instead.
    """

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self.known: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.known.get(values)
        if child is None:
            child = self.known[values] = self.metric.labels(*values)
        return child


class Metrics:
    """One registry per app (no module-level globals)."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "deployment", "workload", "status"]
        self.requests = Children(Counter("modelyard_requests", "requests by served model, deployment, class and status", labels, registry=self.registry))
        self.latency = Children(Histogram("modelyard_request_seconds", "request latency", ["model", "workload"], buckets=LATENCY_BUCKETS, registry=self.registry))
        self.tokens = Children(Counter("modelyard_tokens", "tokens by direction", ["model", "direction"], registry=self.registry))
        self.attempts = Children(Counter("modelyard_attempts", "backend attempts (retries and failovers included)", ["model"], registry=self.registry))
        self.ttft = Children(Histogram("modelyard_time_to_first_token_seconds", "time to first token", ["model", "workload"], buckets=LATENCY_BUCKETS, registry=self.registry))
        self.cost = Children(Counter("modelyard_cost_usd", "cost of requests in US dollars", ["model", "tenant"], registry=self.registry))
        self.routed = Children(Counter("modelyard_routed_requests", "alias requests by the model that answered and how it was chosen", ["alias", "model", "route"], registry=self.registry))
        self.predicted = Children(Histogram("modelyard_route_predicted_quality", "the learned router's predicted chance of a good answer for the model it chose",
                                            ["alias", "model"], buckets=QUALITY_BUCKETS, registry=self.registry))
        self.route_embeddings = Children(Counter("modelyard_route_embeddings", "prompt vectors an alias routed on, by where they came from (embedded, kept), or settled when its word view decided without one",
                                                 ["alias", "result"], registry=self.registry))
        self.cache = Children(Counter("modelyard_cache_requests", "requests a response cache stage saw, by outcome (hit, miss, bypass)", ["model", "result"], registry=self.registry))
        self.saved = Children(Counter("modelyard_cache_saved_usd", "what cache hits saved: the cost of the cached answers when they were made", ["model", "tenant"],
                                      registry=self.registry))
        self.registry.register(FleetCollector(snapshot))

    def observe(self, state: dict[str, Any], status: int, seconds: float) -> None:
        model = state.get("served_model") or state.get("requested_model")
        if model is None:
            return  # not an inference request
        workload = state.get("workload") or ""
        self.requests(model, state.get("deployment") or "", workload, str(status)).inc()
        self.latency(model, workload).observe(seconds)
        usage = state.get("usage")
        if usage is not None:
            self.tokens(model, "in").inc(usage.prompt_tokens)
            self.tokens(model, "out").inc(usage.completion_tokens)
        if state.get("attempts"):
            self.attempts(model).inc(state["attempts"])
        request = state.get("request")
        attempts = getattr(request, "attempts", ())
        first = next((a.ttft_s for a in attempts if a.outcome == "ok" and a.ttft_s is not None), None)
        if first is not None:
            self.ttft(model, workload).observe(first)
        if state.get("cost_usd"):
            self.cost(model, getattr(request, "tenant", "")).inc(state["cost_usd"])
        self._observe_route(request, model)
        self._observe_cache(request, model)

    def _observe_cache(self, request: Any, model: str) -> None:
        outcome = getattr(request, "cache", "")
        if not outcome:
            return  # no cache stage applied
        self.cache(model, outcome).inc()
        if request.saved_usd:
            self.saved(model, request.tenant).inc(request.saved_usd)

    def _observe_route(self, request: Any, model: str) -> None:
        kind = getattr(request, "route_kind", "")
        if not kind:
            return  # a model was named: nothing was routed
        self.routed(request.model, model, kind).inc()
        if request.route_embedding:
            self.route_embeddings(request.model, request.route_embedding).inc()
        if request.predicted_quality is not None:
            self.predicted(request.model, model).observe(request.predicted_quality)

    def render(self) -> bytes:
        return generate_latest(self.registry)
