"""Capacity planning: how many replicas a trace needs to meet its objectives, and what that costs.

The planner simulates the trace (:mod:`.simulate`) with a candidate number of
replicas per self-hosted deployment, checks the objectives per model, and
searches: double a failing model's replicas until it passes, then bisect down
to the fewest that pass. Every model is searched in the same simulation run,
so a plan takes a handful of runs. Hosted deployments are never replicated:
their capacity is their concurrency limit and their price is per token.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelyard.backends.registry import local_processes
from modelyard.config import DeploymentConfig, FleetConfig, ModelConfig
from modelyard.economics.cost import PricePlan
from modelyard.planning.engine_model import EngineModel, load_profile
from modelyard.planning.replay import latency_figures, percentile
from modelyard.planning.simulate import SimOptions, SimRecord, Simulation
from modelyard.planning.traces import TraceRequest
from modelyard.protocol import Usage

REPLICA_SEPARATOR = "#"
MAX_REPLICAS = 512
SLO_PATTERN = re.compile(r"^(?:(?P<workload>[a-z]+)_)?p(?P<q>50|90|99)_(?P<metric>ttft|e2e)_s$")


class PlanError(ValueError):
    """Planner input that cannot be used (an objective, a price plan, a split); the message says which."""


@dataclass(frozen=True, slots=True)
class Objective:
    """One service-level objective: a latency percentile under a limit, or a rejection rate under a limit."""

    metric: str  # "ttft", "e2e" or "rejected_rate"
    limit: float
    quantile: int = 99
    workload: str | None = None  # None: every class

    @property
    def name(self) -> str:
        if self.metric == "rejected_rate":
            return "max_rejected_rate"
        return f"{self.workload + '_' if self.workload else ''}p{self.quantile}_{self.metric}_s"

    def measure(self, records: Sequence[SimRecord]) -> float | None:
        chosen = [r for r in records if self.workload is None or r.workload == self.workload]
        if not chosen:
            return None
        if self.metric == "rejected_rate":
            return sum(1 for r in chosen if r.status != 200) / len(chosen)
        values = [v for r in chosen if r.status == 200 for v in [r.ttft_s if self.metric == "ttft" else r.e2e_s] if v is not None]
        return percentile(values, self.quantile)

    def met(self, records: Sequence[SimRecord]) -> bool:
        value = self.measure(records)
        return value is None or value <= self.limit


DEFAULT_OBJECTIVES = (Objective("ttft", 2.0, 99, "interactive"), Objective("rejected_rate", 0.01))


def parse_objective(text: str) -> Objective:
    """``interactive_p99_ttft_s=2``, ``p50_e2e_s=10`` or ``max_rejected_rate=0.01``."""
    name, sep, value = text.partition("=")
    try:
        limit = float(value)
    except ValueError:
        limit = math.nan
    if not sep or not limit >= 0:
        raise PlanError(f"--slo {text!r}: expected NAME=NUMBER, e.g. interactive_p99_ttft_s=2")
    if name.strip() == "max_rejected_rate":
        return Objective("rejected_rate", limit)
    match = SLO_PATTERN.match(name.strip())
    if match is None:
        raise PlanError(f"--slo {text!r}: the name must be [CLASS_]p50|p90|p99_ttft_s|e2e_s or max_rejected_rate")
    return Objective(match["metric"], limit, int(match["q"]), match["workload"])


def parse_price_plan(text: str) -> tuple[str, PricePlan]:
    """``TENANT=INPUT_PER_1M,OUTPUT_PER_1M[,PER_REQUEST]`` (US dollars)."""
    tenant, sep, numbers = text.partition("=")
    try:
        values = [float(v) for v in numbers.split(",")]
    except ValueError:
        values = []
    if not sep or not tenant or len(values) not in (2, 3) or any(v < 0 for v in values):
        raise PlanError(f"--price-plan {text!r}: expected TENANT=INPUT_PER_1M,OUTPUT_PER_1M[,PER_REQUEST]")
    return tenant, PricePlan(*values)


def parse_tenant_limit(text: str) -> tuple[str, tuple[int | None, int | None]]:
    """``TENANT=RPM,TPM`` (either may be ``-``: no limit), as ``modelyard tenants create --rpm --tpm`` sets them."""
    tenant, sep, numbers = text.partition("=")
    parts = [p.strip() for p in numbers.split(",")]
    if not sep or not tenant.strip() or len(parts) != 2 or parts == ["-", "-"] or not all(p == "-" or (p.isdigit() and int(p) > 0) for p in parts):
        raise PlanError(f"--tenant-limit {text!r}: expected TENANT=RPM,TPM with positive whole numbers (- for no limit)")
    rpm, tpm = (None if p == "-" else int(p) for p in parts)
    return tenant.strip(), (rpm, tpm)


def parse_split(text: str) -> tuple[str, dict[str, float]]:
    """``ALIAS=MODEL:SHARE,MODEL:SHARE``: how a prompt-dependent alias divides the trace."""
    alias, sep, rest = text.partition("=")
    shares: dict[str, float] = {}
    for part in rest.split(","):
        model, colon, share = part.partition(":")
        try:
            shares[model.strip()] = float(share)
        except ValueError:
            raise PlanError(f"--split {text!r}: expected ALIAS=MODEL:SHARE,MODEL:SHARE") from None
        if not colon:
            raise PlanError(f"--split {text!r}: expected ALIAS=MODEL:SHARE,MODEL:SHARE")
    if not sep or not shares or sum(shares.values()) <= 0:
        raise PlanError(f"--split {text!r}: expected ALIAS=MODEL:SHARE,MODEL:SHARE with positive shares")
    return alias.strip(), shares


# -- fleets with replicas ---------------------------------------------------------------------------
def self_hosted(deployment: DeploymentConfig) -> bool:
    """Priced and run as replicas (local engines), not per token (hosted APIs)."""
    return local_processes(deployment) > 0


def with_replicas(config: FleetConfig, replicas: Mapping[str, int]) -> FleetConfig:
    """The fleet with deployment ``d`` copied ``replicas[d]`` times (``d``, ``d#2``, ``d#3``, ...)."""

    def copies(d: DeploymentConfig) -> list[DeploymentConfig]:
        n = max(1, replicas.get(d.name, 1))
        return [d] + [replace(d, name=f"{d.name}{REPLICA_SEPARATOR}{i}") for i in range(2, n + 1)]

    models = tuple(replace(m, deployments=tuple(c for d in m.deployments for c in copies(d))) for m in config.models)
    return replace(config, models=models)


def base_name(deployment: str) -> str:
    return deployment.split(REPLICA_SEPARATOR, 1)[0]


def load_engines(config: FleetConfig, profiles: Path) -> dict[str, EngineModel]:
    """The engine model of every generative deployment, from ``profiles``."""
    return {
        d.name: load_profile(profiles, d.name, "batched" if self_hosted(d) else "independent", int(d.options.get("step_tokens", 64)))
        for m in config.models
        if m.kind != "embedding"
        for d in m.deployments
    }


# -- one simulated run ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunResult:
    replicas: dict[str, int]
    records: list[SimRecord]
    span_s: float
    utilization: dict[str, float]  # per base deployment, mean over its replicas


def simulate(config: FleetConfig, engines: Mapping[str, EngineModel], trace: Sequence[TraceRequest], replicas: Mapping[str, int], options: SimOptions) -> RunResult:
    fleet = with_replicas(config, replicas)
    copied = {d.name: engines[base_name(d.name)] for m in fleet.models if m.kind != "embedding" for d in m.deployments}
    sim = Simulation(fleet, copied, options)
    records = sim.run(trace)
    ends = [r.arrival_s + r.e2e_s for r in records if r.e2e_s is not None]
    span = max([trace[-1].arrival_s if trace else 0.0, *ends]) or 1e-9
    per_base: dict[str, list[float]] = defaultdict(list)
    for name, value in sim.utilization(span).items():
        per_base[base_name(name)].append(value)
    utilization = {name: sum(v) / len(v) for name, v in per_base.items()}
    return RunResult(dict(replicas), records, span, utilization)


def by_model(records: Sequence[SimRecord]) -> dict[str, list[SimRecord]]:
    grouped: dict[str, list[SimRecord]] = defaultdict(list)
    for r in records:
        grouped[r.model].append(r)
    return grouped


# -- the search ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    """The fewest replicas that met every objective (``met`` False: none up to the cap did), and the run at that size."""

    run: RunResult
    met: dict[str, bool]  # per model
    runs: int


def failing_models(config: FleetConfig, result: RunResult, objectives: Sequence[Objective]) -> set[str]:
    grouped = by_model(result.records)
    return {m.name for m in config.models if m.name in grouped and not all(o.met(grouped[m.name]) for o in objectives)}


def scalable(model: ModelConfig) -> list[str]:
    return [d.name for d in model.deployments if self_hosted(d)]


def plan_replicas(
    config: FleetConfig, engines: Mapping[str, EngineModel], trace: Sequence[TraceRequest], objectives: Sequence[Objective],
    options: SimOptions, max_replicas: int = MAX_REPLICAS,
) -> Plan:
    """Grow each failing model's replicas by doubling, then bisect each model down to the fewest that pass."""
    models = [m for m in config.models if m.kind != "embedding" and scalable(m)]
    size = {m.name: 1 for m in models}
    passing: dict[str, int] = {}
    failing: dict[str, int] = dict.fromkeys(size, 0)
    runs = 0

    def run(sizes: Mapping[str, int]) -> RunResult:
        nonlocal runs
        runs += 1
        return simulate(config, engines, trace, {d: sizes[m.name] for m in models for d in scalable(m)}, options)

    result = run(size)
    while True:  # grow
        bad = failing_models(config, result, objectives) & set(size)
        for name in size:
            if name not in bad:
                passing.setdefault(name, size[name])
            else:
                failing[name] = size[name]
        growing = [n for n in bad if size[n] < max_replicas]
        if not growing:
            break
        for name in growing:
            size[name] = min(max_replicas, size[name] * 2)
        result = run(size)
    best = dict(size) | passing
    while any(best[n] - failing[n] > 1 for n in passing):  # bisect
        trial = {n: (failing[n] + best[n]) // 2 if n in passing and best[n] - failing[n] > 1 else best[n] for n in best}
        result = run(trial)
        bad = failing_models(config, result, objectives)
        for name in passing:
            if trial[name] != best[name]:
                if name in bad:
                    failing[name] = trial[name]
                else:
                    best[name] = trial[name]
    final = run(best)
    bad = failing_models(config, final, objectives)
    return Plan(final, {m.name: m.name not in bad for m in models}, runs)


# -- what a run says -----------------------------------------------------------------------------------
def summarize_run(
    config: FleetConfig, result: RunResult, objectives: Sequence[Objective], plans: Mapping[str, PricePlan] | None = None,
) -> dict[str, Any]:
    """The figures ``replay`` reports plus replicas, utilization, fleet cost, per-tenant cost, revenue and margin."""
    records = result.records
    ok = [r for r in records if r.status == 200]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.e2e_s is not None and r.ttft_s is not None and r.output_tokens > 1]
    hours = result.span_s / 3600
    fleet_cost, per_deployment = fleet_cost_usd(config, result, hours)
    tenants = tenant_costs(records, fleet_cost)
    revenue = None
    if plans:
        revenue = sum(plans.get(r.tenant, plans.get("*", PricePlan())).revenue(Usage(r.input_tokens, r.output_tokens), r.status == 200) for r in records)
    total = len(records)
    grouped = by_model(records)
    return {
        "requests": total,
        "completed": len(ok),
        "rejected_rate": round(sum(1 for r in records if r.status == 429) / total, 4) if total else 0.0,
        "error_rate": round(sum(1 for r in records if r.status not in (200, 429)) / total, 4) if total else 0.0,
        **latency_figures(ttft, tpot, e2e),
        "throughput_rps": round(len(ok) / result.span_s, 3) if result.span_s else None,
        "output_tokens": sum(r.output_tokens for r in ok),
        "span_s": round(result.span_s, 2),
        "replicas": result.replicas,
        "utilization": {k: round(v, 3) for k, v in result.utilization.items()},
        "cost_usd": round(fleet_cost, 6),
        "cost_per_1k_requests_usd": round(fleet_cost / len(ok) * 1000, 6) if ok else None,
        "cost_by_deployment_usd": {k: round(v, 6) for k, v in per_deployment.items()},
        "cost_by_tenant_usd": {k: round(v, 6) for k, v in tenants.items()},
        "revenue_usd": None if revenue is None else round(revenue, 6),
        "margin_usd": None if revenue is None else round(revenue - fleet_cost, 6),
        "objectives": {o.name: _rounded(o.measure(records)) for o in objectives},
        "models": {name: model_summary(rs, objectives) for name, rs in sorted(grouped.items()) if name},
    }


def model_summary(records: Sequence[SimRecord], objectives: Sequence[Objective]) -> dict[str, Any]:
    ok = [r for r in records if r.status == 200]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    return {
        "requests": len(records),
        "rejected_rate": round(sum(1 for r in records if r.status == 429) / len(records), 4) if records else 0.0,
        "ttft_p50_ms": _ms(percentile(ttft, 50)), "ttft_p99_ms": _ms(percentile(ttft, 99)),
        "e2e_p50_ms": _ms(percentile(e2e, 50)), "e2e_p99_ms": _ms(percentile(e2e, 99)),
        "objectives_met": all(o.met(records) for o in objectives),
    }


def fleet_cost_usd(config: FleetConfig, result: RunResult, hours: float) -> tuple[float, dict[str, float]]:
    """Self-hosted: every replica for the whole span at its replica-hour price. Hosted: the tokens of every request it served."""
    cost: dict[str, float] = defaultdict(float)
    for m in config.models:
        for d in m.deployments:
            if self_hosted(d) or m.kind == "embedding":
                cost[d.name] += d.price.replica_hour * hours * result.replicas.get(d.name, 1)
    prices = {d.name: d.price for m in config.models for d in m.deployments if not self_hosted(d)}
    for r in result.records:
        price = prices.get(base_name(r.deployment))
        if price is not None and r.status == 200:
            cost[base_name(r.deployment)] += (r.input_tokens * price.input_per_1m + r.output_tokens * price.output_per_1m) / 1_000_000
    return sum(cost.values()), dict(cost)


def tenant_costs(records: Sequence[SimRecord], fleet_cost: float) -> dict[str, float]:
    """The fleet's cost divided by what each tenant's requests occupied (the ledger's attribution)."""
    attributed: dict[str, float] = defaultdict(float)
    for r in records:
        attributed[r.tenant] += r.cost_usd
    total = sum(attributed.values())
    if total <= 0:
        return dict.fromkeys(attributed, 0.0)
    return {t: fleet_cost * v / total for t, v in attributed.items()}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
