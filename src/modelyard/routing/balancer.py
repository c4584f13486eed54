"""Pick one deployment of a model: least outstanding, least load, weighted, lowest latency or lowest cost."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """Load an engine publishes about itself (vLLM's or llama-server's /metrics), as plain data."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0  # 0..1


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """What the balancer knows of one candidate, as plain data."""

    name: str
    outstanding: int = 0
    weight: float = 1.0
    ewma_ttft_s: float | None = None  # None: no sample yet
    unit_price: float = 0.0  # comparable cost per request unit
    engine: EngineLoad | None = None  # None: the engine publishes no load (or not read yet)


def load_key(view: DeploymentView) -> tuple[float, float, float]:
    """Least load first: the engine's queue, then its KV-cache pressure (in tenths), then requests running.

    What the engine reports includes other clients' traffic; modelyard's own
    in-flight count covers requests sent since the last poll. A deployment
    that publishes nothing is judged by that count alone.
    """
    engine = view.engine
    if engine is None:
        return (0.0, 0.0, float(view.outstanding))
    return (engine.waiting, float(int(engine.kv_usage * 10)), max(engine.running, float(view.outstanding)))


def choose(strategy: str, candidates: Sequence[DeploymentView], rng: random.Random) -> str:
    """The chosen deployment's name; ``candidates`` must be non-empty and already healthy."""
    if not candidates:
        raise ValueError("no candidate deployments")
    if strategy == "weighted":
        weights = [max(c.weight, 0.0) for c in candidates]
        if sum(weights) <= 0:
            return candidates[0].name
        return rng.choices(list(candidates), weights=weights, k=1)[0].name
    if strategy == "lowest_latency":
        # An unmeasured deployment is tried first so every one gets a sample.
        return min(candidates, key=lambda c: (c.ewma_ttft_s is not None, c.ewma_ttft_s or 0.0, c.outstanding)).name
    if strategy == "least_load":
        return min(candidates, key=load_key).name
    if strategy == "lowest_cost":
        return min(candidates, key=lambda c: (c.unit_price, c.outstanding)).name
    return min(candidates, key=lambda c: c.outstanding).name
