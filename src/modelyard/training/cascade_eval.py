"""Cascades and route-then-escalate policies, evaluated by replaying recorded answers (pure; no model runs).

``modelyard router collect`` records, per question and model, the answer's
score, cost, mean token log-probability and whether it passes the checks a
cascade can run without the truth (see :func:`passes_checks`). A cascade
answers with the cheap model and escalates to the strong one when the cheap
answer fails a check or its mean log-probability is below a threshold; it pays
for both answers when it escalates. The combined policy first routes (the
learned router's choice), then escalates what it sent to the cheap model by
the same rule. Sweeping the threshold (and the router's knob) gives each
policy's cost/quality points, compared by AIQ on the same axes as the router.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelyard.training.collect import MAX_TOKENS
from modelyard.training.scoring import extract_code

Matrix = npt.NDArray[np.float64]
_LETTER_FIRST = re.compile(r"^\W*[A-J](?![A-Za-z])")
_HAS_NUMBER = re.compile(r"\d")


def passes_checks(kind: str, text: str, tokens: int) -> bool:
    """What a cascade's validators can tell without the truth: not cut off by the token limit, and in the asked shape
    (a letter first; a number somewhere; one line; code that parses)."""
    if tokens >= MAX_TOKENS.get(kind, 1 << 30) or not text.strip():  # type: ignore[call-overload]
        return False
    if kind == "choice":
        return _LETTER_FIRST.match(text) is not None
    if kind == "number":
        return _HAS_NUMBER.search(text) is not None
    if kind == "code":
        try:
            compile(extract_code(text), "<answer>", "exec")  # parses only; nothing runs
        except (SyntaxError, ValueError):
            return False
    return True


@dataclass(frozen=True)
class Recorded:
    """The recorded answers of an outcome file, as arrays: one row per question, one column per model."""

    models: tuple[str, ...]
    prompts: list[str]
    tasks: tuple[str, ...]
    scores: Matrix  # (n, m) 0..1
    costs: Matrix  # (n, m) dollars
    confidence: Matrix  # (n, m) mean token log-probability; -inf where none was recorded
    passed: npt.NDArray[np.bool_]  # (n, m) the answer passes the checks

    def subset(self, rows: npt.NDArray[np.int64]) -> Recorded:
        return Recorded(self.models, [self.prompts[i] for i in rows], tuple(self.tasks[i] for i in rows), self.scores[rows], self.costs[rows],
                        self.confidence[rows], self.passed[rows])


def load_recorded(path: Path) -> Recorded:
    """An outcome file written by ``router collect`` (one that records log-probabilities and token counts)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    if not rows or "mean_logprob" not in rows[0]:
        raise ValueError(f"{path}: no recorded log-probabilities (collect it again with this version of `router collect`)")
    models = tuple(rows[0]["scores"])

    def grid(field: str) -> Matrix:
        return np.array([[_number(r[field][m]) for m in models] for r in rows], dtype=np.float64)

    passed = np.array([[passes_checks(r.get("kind", ""), r["outputs"][m], int(r["tokens"][m])) for m in models] for r in rows])
    return Recorded(models, [r["prompt"] for r in rows], tuple(str(r.get("task", "")) for r in rows), grid("scores"), grid("costs"),
                    grid("mean_logprob"), passed)


def _number(value: object) -> float:
    return -math.inf if value is None else float(value)  # type: ignore[arg-type]


def escalations(recorded: Recorded, cheap: int, threshold: float) -> npt.NDArray[np.bool_]:
    """Which questions a cascade escalates: the cheap answer fails a check or is less sure than ``threshold``."""
    return ~recorded.passed[:, cheap] | (recorded.confidence[:, cheap] < threshold)


def cascade_point(recorded: Recorded, cheap: int, strong: int, threshold: float, first: npt.NDArray[np.int64] | None = None) -> tuple[float, float, float]:
    """(mean cost, mean quality, escalated share). ``first``: each question's first model (default: all cheap);
    only questions that start on the cheap model can escalate."""
    n = len(recorded.prompts)
    start = np.full(n, cheap) if first is None else first
    rows = np.arange(n)
    up = (start == cheap) & escalations(recorded, cheap, threshold)
    quality = np.where(up, recorded.scores[:, strong], recorded.scores[rows, start])
    cost = recorded.costs[rows, start] + np.where(up, recorded.costs[:, strong], 0.0)
    return float(cost.mean()), float(quality.mean()), float(up.mean())


def thresholds(recorded: Recorded, cheap: int, points: int = 60) -> list[float]:
    """Escalation thresholds spanning the cheap model's recorded confidences (never, quantiles, always)."""
    finite = recorded.confidence[:, cheap][np.isfinite(recorded.confidence[:, cheap])]
    inner = list(np.quantile(finite, np.linspace(0.0, 1.0, points))) if len(finite) else []
    return [-math.inf, *sorted(set(float(t) for t in inner)), math.inf]


def cascade_sweep(recorded: Recorded, cheap: int, strong: int) -> list[tuple[float, float, float, float]]:
    """(threshold, cost, quality, escalated share) for every threshold of :func:`thresholds`."""
    return [(t, *cascade_point(recorded, cheap, strong, t)) for t in thresholds(recorded, cheap)]


def combined_sweep(recorded: Recorded, choices: list[npt.NDArray[np.int64]], cheap: int, strong: int) -> list[tuple[float, float]]:
    """(cost, quality) of route-then-escalate for every router choice vector (one per router setting) x threshold."""
    out = []
    for first in choices:
        for t in thresholds(recorded, cheap, points=20):
            cost, quality, _ = cascade_point(recorded, cheap, strong, t, first)
            out.append((cost, quality))
    return out
