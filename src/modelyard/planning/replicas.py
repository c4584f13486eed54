"""Simulated replicas of deployments: the fluid engine models the simulator advances. Pure.

A replica holds the sequences running on it. Between two events every rate is
constant, so the replica is advanced in one step to the next event, not token
by token: the simulator stays fast at hundreds of thousands of requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelyard.planning.engine_model import EngineModel

INFINITY = float("inf")


@dataclass(slots=True, eq=False)
class Sequence:
    """One request's attempt on a replica."""

    key: int  # the simulator's attempt number
    prefill_left_s: float  # lone prefill work still to do
    tokens_left: float  # tokens after the first still to decode
    first_token_at: float | None = None
    prompt_token_s: float = 0.0  # this prompt's lone prefill time per token (long prompts cost more per token)


@dataclass(slots=True)
class Replica:
    """One deployment replica under an engine model."""

    engine: EngineModel
    seqs: list[Sequence] = field(default_factory=list)
    updated: float = 0.0
    version: int = 0  # bumps on every change; the simulator drops events of older versions
    busy_since: float | None = None
    busy_s: float = 0.0  # time with at least one sequence on it (utilization)

    def add(self, seq: Sequence, now: float) -> None:
        self.advance(now)
        if not self.seqs:
            self.busy_since = now
        self.seqs.append(seq)
        self.version += 1

    def remove(self, seq: Sequence, now: float) -> None:
        self.advance(now)
        self.seqs.remove(seq)
        if not self.seqs and self.busy_since is not None:
            self.busy_s += now - self.busy_since
            self.busy_since = None
        self.version += 1

    def _rates(self) -> tuple[float, float]:
        """(lone-prefill seconds done per second for the oldest prompt, tokens per second per decoding sequence)."""
        engine = self.engine
        decoding = sum(1 for s in self.seqs if s.prefill_left_s <= 0.0)
        if engine.kind == "independent":
            return 1.0, 1.0 / engine.interval(1)
        prefilling = decoding < len(self.seqs)
        if not prefilling:
            return 0.0, 1.0 / engine.interval(decoding) if decoding else 0.0
        if not decoding:
            return 1.0, 0.0
        head = next(s for s in self.seqs if s.prefill_left_s > 0.0)
        chunk_s = engine.step_tokens * (head.prompt_token_s or engine.prefill_per_token_s)
        step_s = engine.interval(decoding) + engine.mixed_factor * chunk_s
        return chunk_s / step_s, 1.0 / step_s

    def _prefilling(self) -> list[Sequence]:
        waiting = [s for s in self.seqs if s.prefill_left_s > 0.0]
        if self.engine.kind == "independent":
            return waiting
        return waiting[:1]  # the oldest prompt takes the step's prompt budget

    def advance(self, now: float) -> None:
        """Move every sequence forward to ``now`` at the current rates."""
        dt = now - self.updated
        self.updated = now
        if dt <= 0.0 or not self.seqs:
            return
        prefill_rate, decode_rate = self._rates()
        decoding = [s for s in self.seqs if s.prefill_left_s <= 0.0]
        for s in self._prefilling():
            s.prefill_left_s -= prefill_rate * dt
        for s in decoding:
            s.tokens_left -= decode_rate * dt

    def next_event(self) -> tuple[float, Sequence | None]:
        """When the next sequence finishes its prompt or its answer (``inf`` when idle)."""
        if not self.seqs:
            return INFINITY, None
        prefill_rate, decode_rate = self._rates()
        best, who = INFINITY, None
        if prefill_rate > 0.0:
            for s in self._prefilling():
                at = self.updated + max(0.0, s.prefill_left_s) / prefill_rate
                if at < best:
                    best, who = at, s
        if decode_rate > 0.0:
            for s in self.seqs:
                if s.prefill_left_s <= 0.0:
                    at = self.updated + max(0.0, s.tokens_left) / decode_rate
                    if at < best:
                        best, who = at, s
        return best, who

    def utilization(self, now: float, span_s: float) -> float:
        busy = self.busy_s + (now - self.busy_since if self.busy_since is not None else 0.0)
        return busy / span_s if span_s > 0 else 0.0
