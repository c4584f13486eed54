"""A semantic-cache threshold learned online for a target error rate (after vCache, Schroeder et al. 2025).

A static cosine threshold is one number for every prompt; the right one
depends on how the two prompts differ. This model estimates the probability
that a cached answer is right for a new prompt from the similarity and a few
lexical signals (word overlap, length ratio, how many content words differ),
fitted by logistic regression on labelled candidates. The cut is set so that
the expected share of wrong answers among the hits it would have served
(over the last ``memory`` candidates seen) is within ``target_error``: the
candidates most likely right are served first, until their average risk
reaches the target.

Labels come cheap: a candidate that is not served is a miss, the model runs
anyway, and comparing its answer with the cached one says whether the hit
would have been right. Candidates above the cut are served, so to keep
learning there a small share (``explore_rate``) is answered by the model
instead. Until ``min_labels`` labels of both kinds exist, the static
threshold decides.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from modelyard.shaping.polarity import words

Decision = Literal["hit", "miss", "explore"]
STOPWORDS = frozenset(["a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "was", "were", "be", "how", "what", "why", "when", "where", "which", "who", "whom", "do", "does", "did", "i", "you", "my", "your", "it", "its", "this", "that", "with", "can", "could", "should", "would", "will"])


@dataclass(frozen=True, slots=True)
class AdaptivePolicy:
    target_error: float = 0.02
    static_threshold: float = 0.95  # decides until enough labels exist
    floor: float = 0.75  # candidates less similar than this are never considered
    min_labels: int = 200
    explore_rate: float = 0.1
    refit_every: int = 50
    memory: int = 20_000  # labels kept for fitting


def features(similarity: float, query: str, cached: str) -> npt.NDArray[np.float64]:
    q, c = set(words(query)), set(words(cached))
    union = q | c
    jaccard = len(q & c) / len(union) if union else 1.0
    length = min(len(q), len(c)) / max(len(q), len(c), 1)
    content = len({w for w in q ^ c if w not in STOPWORDS})
    z = (similarity - 0.9) / 0.05  # scaled, so the light ridge penalty does not flatten the similarity's effect
    closeness = -np.log10(max(1.0 - similarity, 0.0) + 1e-3)  # 0 far apart, 3 identical: the sharp rise of near-copies
    return np.array([1.0, z, closeness, jaccard, length, min(content, 10) / 10.0])


@dataclass
class AdaptiveThreshold:
    """The online model; one per cache scope group (callers decide how to share it)."""

    policy: AdaptivePolicy = field(default_factory=AdaptivePolicy)
    samples: deque[tuple[npt.NDArray[np.float64], int, float]] = field(default_factory=deque)  # (features, right, weight)
    seen: deque[npt.NDArray[np.float64]] = field(default_factory=deque)  # recent candidates' features, labelled or not
    weights: npt.NDArray[np.float64] | None = None
    cut: float = 0.0  # serve a candidate whose fitted chance of being wrong is at most this
    pending: int = 0

    def probability_wrong(self, similarity: float, query: str, cached: str) -> float | None:
        """The fitted chance that ``cached``'s answer is wrong for ``query`` (None before the model exists)."""
        if self.weights is None:
            return None
        z = float(features(similarity, query, cached) @ self.weights)
        return 1.0 - 1.0 / (1.0 + np.exp(-z))

    def decide(self, similarity: float, query: str, cached: str, draw: float) -> Decision:
        """Serve the candidate, refuse it, or answer with the model to learn (``draw``: uniform in [0, 1))."""
        if similarity < self.policy.floor:
            return "miss"
        self.seen.append(features(similarity, query, cached))
        while len(self.seen) > self.policy.memory:
            self.seen.popleft()
        wrong = self.probability_wrong(similarity, query, cached)
        accept = similarity >= self.policy.static_threshold if wrong is None else wrong <= self.cut
        if accept and draw < self.policy.explore_rate:
            return "explore"
        return "hit" if accept else "miss"

    def observe(self, similarity: float, query: str, cached: str, correct: bool, explored: bool = False) -> None:
        """A label: the candidate's answer was (or would have been) right for the query.

        ``explored``: the candidate was one the model would have served, answered by the model instead. Only
        ``explore_rate`` of those are ever labelled, so each counts ``1 / explore_rate`` times in the fit; without
        that the served region would be learned from its refused (mostly wrong) candidates alone.
        """
        if similarity < self.policy.floor:
            return
        weight = 1.0 / self.policy.explore_rate if explored and self.policy.explore_rate > 0 else 1.0
        self.samples.append((features(similarity, query, cached), int(correct), weight))
        while len(self.samples) > self.policy.memory:
            self.samples.popleft()
        self.pending += 1
        if self.pending >= self.policy.refit_every:
            self.pending = 0
            self.refit()

    def refit(self) -> None:
        labels = np.array([y for _, y, _ in self.samples], dtype=np.float64)
        if len(labels) < self.policy.min_labels or labels.min() == labels.max():
            return
        x = np.stack([x for x, _, _ in self.samples])
        self.weights = _logistic(x, labels, np.array([w for _, _, w in self.samples]), self.weights)
        self.cut = _cut(np.stack(list(self.seen)) if self.seen else x, self.weights, self.policy.target_error)


def _cut(candidates: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], target: float) -> float:
    """The largest risk such that serving every candidate at or below it keeps their mean risk within ``target``."""
    risk = np.sort(1.0 - 1.0 / (1.0 + np.exp(-np.clip(candidates @ weights, -30, 30))))
    mean = np.cumsum(risk) / np.arange(1, len(risk) + 1)
    within = np.nonzero(mean <= target)[0]
    return float(risk[within[-1]]) if len(within) else 0.0


def _logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], sample_weights: npt.NDArray[np.float64], start: npt.NDArray[np.float64] | None,
    l2: float = 1e-4, steps: int = 25,
) -> npt.NDArray[np.float64]:
    """Weighted maximum-likelihood weights by Newton's method (IRLS), lightly regularised."""
    w = np.zeros(x.shape[1]) if start is None else start.copy()
    ridge = l2 * float(sample_weights.sum()) * np.eye(x.shape[1])
    ridge[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (sample_weights * (p - y)) + ridge @ w
        hessian = (x * (sample_weights * p * (1 - p))[:, None]).T @ x + ridge + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def answers_agree(a: str, b: str, min_f1: float = 0.7) -> bool:
    """Two answers say the same thing, by word-overlap F1 (the label an explored candidate gets)."""
    wa, wb = words(a), words(b)
    if not wa or not wb:
        return wa == wb
    common = sum(min(wa.count(w), wb.count(w)) for w in set(wa))
    if common == 0:
        return False
    precision, recall = common / len(wa), common / len(wb)
    return 2 * precision * recall / (precision + recall) >= min_f1
