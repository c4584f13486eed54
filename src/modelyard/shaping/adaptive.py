"""A semantic-cache threshold learned online for a target error rate (after vCache, Schroeder et al. 2025).

A static cosine threshold is one number for every prompt; the right one
depends on how the two prompts differ. This model estimates the probability
that a cached answer is right for a new prompt from the similarity and a few
lexical signals (word overlap, length ratio, how many content words differ),
fitted by logistic regression on labelled candidates, and serves a hit only
when that probability's complement is within ``target_error``.

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
    explore_rate: float = 0.05
    refit_every: int = 50
    memory: int = 20_000  # labels kept for fitting


def features(similarity: float, query: str, cached: str) -> npt.NDArray[np.float64]:
    q, c = set(words(query)), set(words(cached))
    union = q | c
    jaccard = len(q & c) / len(union) if union else 1.0
    length = min(len(q), len(c)) / max(len(q), len(c), 1)
    content = len({w for w in q ^ c if w not in STOPWORDS})
    z = (similarity - 0.9) / 0.05  # scaled, so the light ridge penalty does not flatten the similarity's effect
    return np.array([1.0, z, z * z, jaccard, length, min(content, 10) / 10.0])


@dataclass
class AdaptiveThreshold:
    """The online model; one per cache scope group (callers decide how to share it)."""

    policy: AdaptivePolicy = field(default_factory=AdaptivePolicy)
    samples: deque[tuple[npt.NDArray[np.float64], int]] = field(default_factory=deque)
    weights: npt.NDArray[np.float64] | None = None
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
        wrong = self.probability_wrong(similarity, query, cached)
        accept = similarity >= self.policy.static_threshold if wrong is None else wrong <= self.policy.target_error
        if accept and draw < self.policy.explore_rate:
            return "explore"
        return "hit" if accept else "miss"

    def observe(self, similarity: float, query: str, cached: str, correct: bool) -> None:
        """A label: the candidate's answer was (or would have been) right for the query."""
        if similarity < self.policy.floor:
            return
        self.samples.append((features(similarity, query, cached), int(correct)))
        while len(self.samples) > self.policy.memory:
            self.samples.popleft()
        self.pending += 1
        if self.pending >= self.policy.refit_every:
            self.pending = 0
            self.refit()

    def refit(self) -> None:
        labels = np.array([y for _, y in self.samples], dtype=np.float64)
        if len(labels) < self.policy.min_labels or labels.min() == labels.max():
            return
        self.weights = _logistic(np.stack([x for x, _ in self.samples]), labels, self.weights)


def _logistic(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], start: npt.NDArray[np.float64] | None, l2: float = 1e-4, steps: int = 25) -> npt.NDArray[np.float64]:
    """Maximum-likelihood weights by Newton's method (IRLS), lightly regularised."""
    w = np.zeros(x.shape[1]) if start is None else start.copy()
    ridge = l2 * len(y) * np.eye(x.shape[1])
    ridge[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (p - y) + ridge @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge + 1e-9 * np.eye(x.shape[1])
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
