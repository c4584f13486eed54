"""Which deployment of a model takes the next attempt: balancer, breakers, session affinity.

No I/O and no clock of its own: the fleet's live state comes in through
:class:`FleetState` and time through the injected clock, so the live
dispatcher and the planner's simulator make the same choices from the same
state.
"""

from __future__ import annotations

import random
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from modelyard.config import FleetConfig, ModelConfig
from modelyard.errors import ModelyardError, NotReady
from modelyard.reliability.breaker import CircuitBreaker
from modelyard.reliability.retry import counts_against_deployment
from modelyard.routing.balancer import DeploymentView, EngineLoad, choose

EWMA_ALPHA = 0.2
TTFT_SAMPLES = 200
MAX_SESSIONS = 10_000


class FleetState(Protocol):
    """What the picker reads about the fleet: the live runtime, or the simulator's replicas."""

    @property
    def outstanding(self) -> Mapping[str, int]: ...

    def is_ready(self, deployment: str) -> bool: ...


EngineLoadOf = Callable[[str], EngineLoad | None]


def _no_engine_load(_: str) -> EngineLoad | None:
    return None


class DeploymentPicker:
    """Chooses deployments and learns from each attempt's outcome (breakers, TTFT averages)."""

    def __init__(
        self,
        config: FleetConfig,
        fleet: FleetState,
        clock: Callable[[], float],
        rng: random.Random,
        engine_load: EngineLoadOf = _no_engine_load,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.clock = clock
        self.rng = rng
        self.engine_load = engine_load
        self.models = {d.name: m for m in config.models for d in m.deployments}
        self.breakers = {name: CircuitBreaker(m.breaker, clock) for name, m in self.models.items()}
        self.ewma_ttft: dict[str, float] = {}
        self.ttft_samples: dict[str, deque[float]] = {name: deque(maxlen=TTFT_SAMPLES) for name in self.models}
        self.sessions: OrderedDict[str, str] = OrderedDict()
        self.affinity_slack = config.scheduling.session_affinity_slack

    def _views(self, model: ModelConfig, names: Sequence[str]) -> list[DeploymentView]:
        by_name = {d.name: d for d in model.deployments}
        return [
            DeploymentView(
                name=n,
                outstanding=self.fleet.outstanding.get(n, 0),
                weight=by_name[n].weight,
                ewma_ttft_s=self.ewma_ttft.get(n),
                unit_price=by_name[n].price.input_per_1m + by_name[n].price.output_per_1m + by_name[n].price.replica_hour,
                engine=self.engine_load(n),
            )
            for n in names
        ]

    def pick(self, model: ModelConfig, exclude: set[str], session: str | None = None, workload: str = "interactive") -> str | None:
        """A healthy deployment not yet tried (or, if all were tried, any healthy one).

        Only deployments that serve ``workload`` are candidates while one of
        them is healthy. A session sticks to its last deployment (its prefix
        cache is there) while that one's load is within
        ``session_affinity_slack`` of the least loaded.
        """
        healthy = self._healthy(model, workload)
        fresh = [n for n in healthy if n not in exclude] or healthy
        while fresh:
            name = self._sticky(session, fresh) or self._balanced(model, fresh)
            if self.breakers[name].allow():
                if session is not None:
                    self.sessions[session] = name
                    self.sessions.move_to_end(session)
                    while len(self.sessions) > MAX_SESSIONS:
                        self.sessions.popitem(last=False)
                return name
            fresh.remove(name)
        return None

    def _balanced(self, model: ModelConfig, candidates: list[str]) -> str:
        if len(candidates) == 1:
            return candidates[0]
        if model.strategy == "least_outstanding":
            # balancer.choose's rule for this strategy (fewest in flight, first on a tie) without building
            # a view per candidate: the simulator picks among hundreds of replicas per request.
            outstanding = self.fleet.outstanding
            return min(candidates, key=lambda n: outstanding.get(n, 0))
        return choose(model.strategy, self._views(model, candidates), self.rng)

    def _sticky(self, session: str | None, candidates: list[str]) -> str | None:
        if session is None:
            return None
        least = min(self.fleet.outstanding.get(n, 0) for n in candidates)
        previous = self.sessions.get(session)
        if previous in candidates and self.fleet.outstanding.get(previous, 0) <= least + self.affinity_slack:
            return previous
        # A new (or moved) session: spread sessions over the least-loaded deployments by hash.
        idle = sorted(n for n in candidates if self.fleet.outstanding.get(n, 0) == least)
        return idle[zlib.crc32(session.encode()) % len(idle)]

    def _healthy(self, model: ModelConfig, workload: str) -> list[str]:
        healthy = [d for d in model.deployments if self.fleet.is_ready(d.name) and self.breakers[d.name].available()]
        # The class's own deployments; when none of them is healthy, any deployment rather than an outage.
        return [d.name for d in healthy if d.serves(workload)] or [d.name for d in healthy]

    def untried_available(self, model: ModelConfig, tried: set[str], workload: str = "interactive") -> bool:
        return any(name not in tried for name in self._healthy(model, workload))

    def unavailable(self, model: ModelConfig) -> NotReady:
        now = self.clock()
        waits = [model.breaker.cooldown_s - (now - self.breakers[d.name].opened_at) for d in model.deployments]
        retry = max(1.0, min(waits)) if waits else 5.0
        return NotReady(f"no deployment of model '{model.name}' is available (not ready or circuit open)", retry_after=retry)

    # -- outcomes -------------------------------------------------------------------
    def succeeded(self, deployment: str, ttft: float | None) -> None:
        """A success; ``ttft`` (None for a whole answer, which has no first token) feeds the latency estimates."""
        self.breakers[deployment].record_success()
        if ttft is None:
            return
        previous = self.ewma_ttft.get(deployment)
        self.ewma_ttft[deployment] = ttft if previous is None else EWMA_ALPHA * ttft + (1 - EWMA_ALPHA) * previous
        self.ttft_samples[deployment].append(ttft)

    def failed(self, deployment: str, error: ModelyardError) -> None:
        if counts_against_deployment(error):
            self.breakers[deployment].record_failure()
        else:
            self.breakers[deployment].release_probe()

    def hedge_delay_s(self, model: ModelConfig, deployment: str) -> float | None:
        """When to send a hedged copy: the model's fixed delay, else this deployment's p95 TTFT once measured."""
        if not model.hedge.enabled:
            return None
        if model.hedge.after_ms is not None:
            return model.hedge.after_ms / 1000
        samples = sorted(self.ttft_samples[deployment])
        if len(samples) < model.hedge.min_samples:
            return None
        return samples[min(len(samples) - 1, int(0.95 * len(samples)))]

    def describe(self) -> dict[str, object]:
        return {
            name: breaker.describe() | {"ewma_ttft_ms": round(self.ewma_ttft[name] * 1000, 2) if name in self.ewma_ttft else None}
            for name, breaker in self.breakers.items()
        }
