"""A remote deployment's speed fitted from the ledger's history. Pure.

A hosted API cannot be profiled like a local engine (its load is not ours to
set, and probing costs money), but the ledger already holds what it did: per
answered request its prompt and completion tokens, the time to its first
token and the answering attempt's own time (``upstream_ms``, start to last
chunk). From those rows this fits the ``independent`` engine model the
simulator uses for hosted deployments:

- **TTFT** ``fixed_s + per_token_s x prompt``: a line through the median TTFT
  of prompt-length bins (medians, so a slow tail does not tilt the line);
- **token interval**: the median of ``(upstream - ttft) / (completion - 1)``;
- **jitter**: quantiles of each request's TTFT and interval divided by what
  the fit predicts for it. The simulator draws each request's factors from
  them, so a hosted API's tail (its p99) comes from what it really did.

The output has the shape of a ``modelyard profile`` file (``source: ledger``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from modelyard.planning.profile import fit_line

BINS = 8  # prompt-length bins for the TTFT line
QUANTILES = 20  # jitter: the 0th, 5th, ..., 100th percentiles
MIN_SAMPLES = 30  # fewer answered requests than this is not a distribution


class NotEnoughHistory(ValueError):
    """The ledger holds too few answered requests of a deployment to fit its speed."""


def quantiles(values: Sequence[float], count: int = QUANTILES) -> list[float]:
    """``count + 1`` evenly spaced quantiles, minimum and maximum included (linear between order statistics)."""
    return [float(q) for q in np.quantile(values, np.linspace(0.0, 1.0, count + 1))]


def _binned_medians(points: Sequence[tuple[int, float]], bins: int) -> list[tuple[float, float]]:
    """(median prompt, median TTFT) per bin of about equal counts, ordered by prompt length."""
    ordered = sorted(points)
    size = max(1, len(ordered) // bins)
    groups = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    if len(groups) > 1 and len(groups[-1]) < size:  # a short last bin joins the one before
        groups[-2] += groups.pop()
    return [(statistics.median(p for p, _ in g), statistics.median(t for _, t in g)) for g in groups]


def fit_remote(rows: Iterable[Mapping[str, Any]], min_samples: int = MIN_SAMPLES) -> dict[str, Any]:
    """The profile of one deployment from its ledger rows (``prompt_tokens``, ``completion_tokens``, ``ttft_ms``, ``upstream_ms``)."""
    ttfts: list[tuple[int, float]] = []
    intervals: list[float] = []
    for row in rows:
        prompt, completion = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
        ttft_ms, upstream_ms = row.get("ttft_ms"), row.get("upstream_ms")
        if ttft_ms is None or upstream_ms is None or float(ttft_ms) <= 0:
            continue
        ttfts.append((prompt, float(ttft_ms) / 1000))
        if completion >= 2 and float(upstream_ms) > float(ttft_ms):
            intervals.append((float(upstream_ms) - float(ttft_ms)) / 1000 / (completion - 1))
    if len(ttfts) < min_samples:
        raise NotEnoughHistory(f"{len(ttfts)} answered requests (at least {min_samples} needed)")
    medians = _binned_medians(ttfts, BINS)
    fixed_s, per_token_s = fit_line(medians)
    per_token_s = max(0.0, per_token_s)
    if per_token_s == 0.0:
        fixed_s = statistics.median(t for _, t in ttfts)
    fixed_s = max(1e-6, fixed_s)

    def predicted(prompt: int) -> float:
        return max(1e-6, fixed_s + per_token_s * prompt)

    interval_s = statistics.median(intervals) if intervals else 0.0
    ttft_ratios = [t / predicted(p) for p, t in ttfts]
    interval_ratios = [i / interval_s for i in intervals] if interval_s > 0 else []
    return {
        "prefill": {"fixed_s": round(fixed_s, 6), "per_token_s": round(per_token_s, 9), "points": []},
        "decode_interval_s": {"1": round(interval_s, 6)},
        "jitter": {
            "ttft": [round(q, 4) for q in quantiles(ttft_ratios)],
            "interval": [round(q, 4) for q in quantiles(interval_ratios)] if interval_ratios else [],
        },
        "prompt_overhead_tokens": 0,  # the ledger counts the tokens the upstream billed, template included
        "slots": 1,
        "samples": len(ttfts),
        "source": "ledger",
    }


def draw(jitter: Sequence[float], u: float) -> float:
    """The factor at uniform position ``u`` in [0, 1) of evenly spaced quantiles (1.0 without any)."""
    if len(jitter) < 2:
        return 1.0
    position = u * (len(jitter) - 1)
    low = int(position)
    high = min(len(jitter) - 1, low + 1)
    return jitter[low] + (jitter[high] - jitter[low]) * (position - low)
