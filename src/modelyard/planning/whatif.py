"""What-if variants of a plan: a burst, a prefix cache, a router split or quality target, a hosted/self-hosted mix.

Each variant changes one input and either re-plans (how many replicas, what
cost) or re-runs the planned fleet (does it still hold).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelyard.config import FleetConfig
from modelyard.economics.cost import PricePlan
from modelyard.planning.engine_model import EngineModel
from modelyard.planning.plan import Objective, Plan, PlanError, failing_models, plan_replicas, self_hosted, simulate, summarize_run
from modelyard.planning.simulate import SimOptions
from modelyard.planning.traces import TraceRequest, scale

WHAT_IFS = ("burst", "cache", "split", "target", "mix")


@dataclass(frozen=True, slots=True)
class TargetRow:
    """Where a learned alias sends prompts at one quality target, and what those answers scored (``modelyard router shares``)."""

    target: float
    shares: Mapping[str, float]
    quality: float


def load_target_shares(text: str, config: FleetConfig) -> tuple[str, tuple[TargetRow, ...]]:
    """``ALIAS=FILE``: the alias and its rows, checked against the fleet (every model with a share must be one of the alias's)."""
    alias_name, sep, path = text.partition("=")
    alias = config.alias(alias_name.strip()) if sep else None
    if alias is None:
        raise PlanError(f"--target-shares {text!r}: expected ALIAS=FILE with an alias of the fleet")
    try:
        data = json.loads(Path(path).read_text())
        rows = tuple(TargetRow(float(r["target"]), {str(m): float(v) for m, v in r["shares"].items() if float(v) > 0}, float(r["quality"])) for r in data["rows"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PlanError(f"--target-shares {text!r}: not a `modelyard router shares` file ({exc})") from None
    strangers = sorted({m for r in rows for m in r.shares} - set(alias.targets))
    if strangers or not rows:
        raise PlanError(f"--target-shares {text!r}: {', '.join(strangers) or 'no rows'}: not among {alias.name}'s targets ({', '.join(alias.targets)})")
    return alias.name, rows


def served_row(rows: Sequence[TargetRow], target: float) -> TargetRow:
    """The row nearest the alias's configured quality target: how the alias divides traffic as served."""
    return min(rows, key=lambda r: abs(r.target - target))


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """Everything one plan is made of."""

    config: FleetConfig
    engines: Mapping[str, EngineModel]
    trace: Sequence[TraceRequest]
    objectives: Sequence[Objective]
    options: SimOptions
    plans: Mapping[str, PricePlan]
    target_shares: Mapping[str, Sequence[TargetRow]] = field(default_factory=dict)  # learned alias -> its rows


def row(name: str, change: str, inputs: PlanInputs, plan: Plan) -> dict[str, Any]:
    summary = summarize_run(inputs.config, plan.run, inputs.objectives, inputs.plans)
    return {
        "what_if": name, "change": change, "replicas": summary["replicas"], "objectives_met": all(plan.met.values()) if plan.met else True,
        "ttft_p99_ms": summary["ttft_p99_ms"], "e2e_p50_ms": summary["e2e_p50_ms"], "rejected_rate": summary["rejected_rate"],
        "cost_usd": summary["cost_usd"], "cost_per_1k_requests_usd": summary["cost_per_1k_requests_usd"], "margin_usd": summary["margin_usd"],
    }


def what_ifs(inputs: PlanInputs, planned: Plan, chosen: Sequence[str]) -> list[dict[str, Any]]:
    rows = [row("as planned", "", inputs, planned)]
    if "burst" in chosen:
        rows.append(_burst(inputs, planned))
    if "cache" in chosen:
        cached = replace(inputs, options=replace(inputs.options, cache_hit_rate=0.5))
        rows.append(row("prefix cache", "50% of prompt tokens cached", cached, _replan(cached)))
    if "split" in chosen:
        for alias, shares in inputs.options.splits.items():
            for model in shares:
                moved = replace(inputs, options=replace(inputs.options, splits={**inputs.options.splits, alias: {model: 1.0}}))
                rows.append(row("router split", f"every {alias} request to {model}", moved, _replan(moved)))
    if "target" in chosen:
        rows += _targets(inputs)
    if "mix" in chosen:
        rows += _mixes(inputs)
    return rows


def _targets(inputs: PlanInputs) -> list[dict[str, Any]]:
    """Each quality target of each learned alias given ``--target-shares``, re-planned: what quality costs in replicas and dollars."""
    out = []
    for alias, target_rows in inputs.target_shares.items():
        for r in target_rows:
            moved = replace(inputs, options=replace(inputs.options, splits={**inputs.options.splits, alias: dict(r.shares)}))
            split = ", ".join(f"{share:.0%} {model}" for model, share in r.shares.items())
            out.append(row("quality target", f"{alias} at target {r.target:g}: {split}", moved, _replan(moved)) | {"expected_quality": r.quality})
    return out


def _replan(inputs: PlanInputs) -> Plan:
    return plan_replicas(inputs.config, inputs.engines, inputs.trace, inputs.objectives, inputs.options)


def _burst(inputs: PlanInputs, planned: Plan) -> dict[str, Any]:
    """The planned fleet under twice the arrival rate: does it hold?"""
    doubled = replace(inputs, trace=scale(inputs.trace, 0.5, 1.0))
    run = simulate(inputs.config, inputs.engines, doubled.trace, planned.run.replicas, inputs.options)
    bad = failing_models(inputs.config, run, inputs.objectives)
    met = {m: m not in bad for m in planned.met}
    return row("2x burst", "twice the arrival rate on the planned replicas", doubled, Plan(run, met, 1))


def _mixes(inputs: PlanInputs) -> list[dict[str, Any]]:
    """For models served both self-hosted and hosted: each alone, re-planned (the cheapest that meets the objectives wins)."""
    rows = []
    mixed = [m for m in inputs.config.models if any(self_hosted(d) for d in m.deployments) and not all(self_hosted(d) for d in m.deployments)]
    for model in mixed:
        for label, keep in (("self-hosted only", True), ("hosted only", False)):
            deployments = tuple(d for d in model.deployments if self_hosted(d) == keep)
            models = tuple(replace(m, deployments=deployments) if m is model else m for m in inputs.config.models)
            variant = replace(inputs, config=replace(inputs.config, models=models))
            rows.append(row("mix", f"{model.name}: {label}", variant, _replan(variant)))
    return rows
