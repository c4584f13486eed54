"""Engine models for the simulator, built from ``modelyard profile`` files. Pure.

Two kinds:

- **batched** (a local continuous-batching engine: llama-server, vLLM): the
  sequences running on one replica share it. A step decodes one token for every
  sequence past its prompt and, when prompts are waiting, up to
  ``step_tokens`` prompt tokens of the oldest; it takes
  ``interval(k) + chunk x per_token_s`` with ``k`` sequences decoding, where
  ``interval(k)`` is the measured time between tokens at that batch size and
  ``per_token_s`` the measured prefill cost per prompt token. The simulator
  runs this as a fluid model: rates change only when a sequence starts,
  finishes its prompt or ends.
- **independent** (a hosted API): every request takes ``fixed_s +
  per_token_s x prompt`` to its first token and ``interval(1)`` per token
  after, whatever else runs; a profile fitted from the ledger also carries
  the spread around those (``jitter``), drawn per request.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

EngineKind = Literal["batched", "independent"]
DEFAULT_STEP_TOKENS = 64  # llama-server's n_batch as modelyard starts it


class ProfileError(ValueError):
    """A profile that is missing or unreadable; the message names the file."""


@dataclass(frozen=True, slots=True)
class EngineModel:
    """How fast one replica of a deployment serves, as fitted numbers."""

    kind: EngineKind
    prefill_fixed_s: float
    prefill_per_token_s: float
    intervals: tuple[tuple[int, float], ...]  # (batch size, seconds between tokens), ascending
    step_tokens: int = DEFAULT_STEP_TOKENS
    prefill_points: tuple[tuple[int, float], ...] = ()  # (prompt tokens, median seconds to first token), ascending
    prompt_overhead_tokens: int = 0  # the chat template's tokens around every prompt
    mixed_factor: float = 1.0  # a prompt's chunk in a step with answers costs this many times its cost alone (profiled)
    # Independent engines fitted from the ledger: quantiles of a request's TTFT and token interval over the fit's
    # prediction; the simulator draws each request's factors from them (empty: every request exactly as fitted).
    ttft_jitter: tuple[float, ...] = ()
    interval_jitter: tuple[float, ...] = ()

    def interval(self, k: int) -> float:
        """Seconds between two tokens of each sequence while ``k`` decode together (linear between and beyond measured sizes)."""
        points = self.intervals
        if k <= points[0][0] or len(points) == 1:
            return points[0][1] if k <= points[0][0] else points[0][1] * k / points[0][0]
        for (k0, t0), (k1, t1) in zip(points, points[1:], strict=False):
            if k <= k1:
                return t0 + (t1 - t0) * (k - k0) / (k1 - k0)
        (k0, t0), (k1, t1) = points[-2], points[-1]
        return max(t1, t1 + (t1 - t0) * (k - k1) / (k1 - k0))

    def prefill_s(self, tokens: int) -> float:
        """Seconds to the first token of a lone request with a ``tokens``-token prompt.

        Between measured lengths, linear between the two nearest; above the
        longest, the last segment's slope (attention makes long prompts cost
        more per token, so one line through every point undershoots short
        prompts); below the shortest, the shortest's time (a step's fixed costs
        dominate a short prompt); without points, the fitted line.
        """
        points = self.prefill_points
        if len(points) < 2:
            return max(0.0, self.prefill_fixed_s + self.prefill_per_token_s * tokens)
        if tokens <= points[0][0]:
            return points[0][1]
        for (n0, t0), (n1, t1) in zip(points, points[1:], strict=False):
            if tokens <= n1:
                return t0 + (t1 - t0) * (tokens - n0) / (n1 - n0)
        (n0, t0), (n1, t1) = points[-2], points[-1]
        return t1 + (t1 - t0) * (tokens - n1) / (n1 - n0)

    def lone_service_s(self, input_tokens: int, output_tokens: int) -> float:
        """A request's time alone on a replica: the unit of the offered-load estimate."""
        return self.prefill_s(input_tokens) + max(0, output_tokens - 1) * self.interval(1)


def engine_from_profile(profile: Mapping[str, Any], kind: EngineKind, step_tokens: int = DEFAULT_STEP_TOKENS) -> EngineModel:
    """The engine model of a ``modelyard profile`` result."""
    prefill = profile["prefill"]
    intervals = tuple(sorted((int(k), float(v)) for k, v in profile["decode_interval_s"].items()))
    if not intervals:
        raise ProfileError("the profile has no decode intervals")
    engine = EngineModel(kind, float(prefill["fixed_s"]), max(0.0, float(prefill["per_token_s"])), intervals, step_tokens, _medians(prefill.get("points") or ()),
                         int(profile.get("prompt_overhead_tokens", 0)))
    jitter = profile.get("jitter") or {}
    if jitter:
        engine = replace(engine, ttft_jitter=tuple(float(q) for q in jitter.get("ttft") or ()), interval_jitter=tuple(float(q) for q in jitter.get("interval") or ()))
    mixed = profile.get("mixed_prefill") or ()
    return replace(engine, mixed_factor=mixed_factor(engine, mixed)) if mixed else engine


def mixed_factor(engine: EngineModel, points: Iterable[Sequence[float]]) -> float:
    """What the measured mixed TTFTs say a prompt's chunk costs beside ``k`` answers, relative to alone.

    A prompt of ``n`` tokens takes ``ceil(n / step_tokens)`` steps; each step
    also decodes the ``k`` answers (``interval(k)``), so
    ``TTFT = steps x interval(k) + factor x prefill_s(n)``. The median over the
    measurements, kept within [0.5, 3].
    """
    factors = []
    for k, tokens, ttft in points:
        alone = engine.prefill_s(int(tokens))
        if alone > 0:
            steps = math.ceil(tokens / engine.step_tokens)
            factors.append((ttft - steps * engine.interval(int(k))) / alone)
    return min(3.0, max(0.5, statistics.median(factors))) if factors else 1.0


def _medians(points: Iterable[Sequence[float]]) -> tuple[tuple[int, float], ...]:
    """The median time per measured prompt length, ascending by length."""
    by_length: dict[int, list[float]] = {}
    for tokens, seconds in points:
        by_length.setdefault(int(tokens), []).append(float(seconds))
    return tuple((n, statistics.median(ts)) for n, ts in sorted(by_length.items()) if n > 0)


def profile_path(directory: Path, deployment: str) -> Path:
    """Where ``modelyard profile`` saves a deployment's profile."""
    return directory / f"{deployment.replace('/', '__')}.json"


def load_profile(directory: Path, deployment: str, kind: EngineKind, step_tokens: int = DEFAULT_STEP_TOKENS) -> EngineModel:
    path = profile_path(directory, deployment)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no profile for deployment {deployment!r}; run `modelyard profile --model <its model> --out {directory}`") from None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    try:
        return engine_from_profile(data, kind, step_tokens)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: not a modelyard profile ({exc})") from None
