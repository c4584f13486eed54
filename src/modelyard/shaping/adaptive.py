"""A semantic-cache threshold learned online for a target error rate (after vCache, Schroeder et al. 2025).

A static cosine threshold is one number for every prompt; the right one
depends on how the two prompts differ and on how crowded the cache is around
the query. This model scores a candidate by logistic regression on the
similarity, a few lexical signals (word overlap, length ratio, how many
content words differ) and the **margin**: how much nearer the candidate is
than the next cached prompt (a query half-way between two cached questions
is ambiguous; ``bench/cache_features.py`` measured that this is the signal
that orders candidates better than the similarity alone).

The cut is chosen on the labels themselves, not on the fitted
probabilities: the lowest score such that the labelled candidates at or
above it have a false share whose one-sided upper bound (``confidence_z``
standard errors, on the labels' effective sample size) is within
``target_error``. A logistic fitted over the whole similarity range is
miscalibrated exactly where the cut falls (among near-copies), and choosing
the cut from its probabilities made earlier versions swing between serving
nothing and serving a third wrong answers.

Labels come cheap: a candidate that is not served is a miss, the model runs
anyway, and comparing its answer with the cached one says whether the hit
would have been right. Candidates above the cut are served, so to keep
learning there a small share (``explore_rate``) is answered by the model
instead, and each such label counts ``1 / explore_rate`` times. Until enough
labels exist, or when no cut passes the bound, the static threshold decides;
nothing below ``serve_floor`` is ever served.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from modelyard.shaping.polarity import words

Decision = Literal["hit", "miss", "explore"]
DEFAULT_TARGET_ERROR = 0.02
DEFAULT_EXPLORE_RATE = 0.05
STOPWORDS = frozenset(["a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "was", "were", "be", "how", "what", "why", "when", "where", "which", "who", "whom", "do", "does", "did", "i", "you", "my", "your", "it", "its", "this", "that", "with", "can", "could", "should", "would", "will"])


@dataclass(frozen=True, slots=True)
class AdaptivePolicy:
    target_error: float = DEFAULT_TARGET_ERROR
    static_threshold: float = 0.95  # decides until enough labels exist, and whenever no learned cut passes
    floor: float = 0.75  # candidates less similar than this are never considered
    serve_floor: float = 0.9  # nor served, whatever the model says
    min_labels: int = 500
    explore_rate: float = DEFAULT_EXPLORE_RATE
    refit_every: int = 200
    memory: int = 20_000  # labels kept for fitting
    confidence_z: float = 1.64  # one-sided 95% when the cut is chosen
    validated_explore_share: float = 0.5  # explore_rate is scaled by this above the static threshold


@dataclass(frozen=True, slots=True)
class Candidate:
    """The nearest cached prompt the polarity guard let through, as the model sees it."""

    similarity: float
    query: str
    cached: str
    runner_up: float = 0.0  # the similarity of the next cached prompt (0: none)


def features(candidate: Candidate) -> npt.NDArray[np.float64]:
    q, c = set(words(candidate.query)), set(words(candidate.cached))
    union = q | c
    jaccard = len(q & c) / len(union) if union else 1.0
    length = min(len(q), len(c)) / max(len(q), len(c), 1)
    content = len({w for w in q ^ c if w not in STOPWORDS})
    similarity = candidate.similarity
    z = (similarity - 0.9) / 0.05  # scaled, so the light ridge penalty does not flatten the similarity's effect
    closeness = -np.log10(max(1.0 - similarity, 0.0) + 1e-3)  # 0 far apart, 3 identical: the sharp rise of near-copies
    margin = max(0.0, similarity - candidate.runner_up)
    return np.array([1.0, z, closeness, jaccard, length, min(content, 10) / 10.0, 20 * margin, 20 * min(margin, 0.05)])


@dataclass
class AdaptiveThreshold:
    """The online model; one per cache scope group (callers decide how to share it)."""

    policy: AdaptivePolicy = field(default_factory=AdaptivePolicy)
    samples: deque[tuple[npt.NDArray[np.float64], int, float]] = field(default_factory=deque)  # (features, right, weight)
    weights: npt.NDArray[np.float64] | None = None
    cut: float | None = None  # serve a candidate whose score is at least this (None: the static threshold decides)
    pending: int = 0

    def score(self, candidate: Candidate) -> float | None:
        """The fitted log-odds that the cached answer is right for the query (None before the model exists)."""
        return None if self.weights is None else float(features(candidate) @ self.weights)

    def decide(self, candidate: Candidate, draw: float) -> Decision:
        """Serve the candidate, refuse it, or answer with the model to learn (``draw``: uniform in [0, 1))."""
        if candidate.similarity < self.policy.floor:
            return "miss"
        score = self.score(candidate)
        if score is None or self.cut is None:
            accept = candidate.similarity >= self.policy.static_threshold
        else:
            # never stricter than the static threshold on similarity alone: a user who set it under the floor keeps it
            floor = min(self.policy.serve_floor, self.policy.static_threshold)
            accept = candidate.similarity >= floor and score >= self.cut
        if accept and draw < self.explore_probability(candidate):
            return "explore"
        return "hit" if accept else "miss"

    def explore_probability(self, candidate: Candidate) -> float:
        """How often an accepted candidate is answered by the model instead, to label it.

        Less often where the static threshold would serve it too: that region was validated when the threshold was
        chosen, and each exploration there is a hit given up."""
        if candidate.similarity >= self.policy.static_threshold:
            return self.policy.explore_rate * self.policy.validated_explore_share
        return self.policy.explore_rate

    def observe(self, candidate: Candidate, correct: bool, explored: bool = False) -> None:
        """A label: the candidate's answer was (or would have been) right for the query.

        ``explored``: the candidate was one the model would have served, answered by the model instead. Only
        ``explore_rate`` of those are ever labelled, so each counts ``1 / explore_rate`` times; without that the
        served region would be judged by its refused (mostly wrong) neighbours alone.
        """
        if candidate.similarity < self.policy.floor:
            return
        probability = self.explore_probability(candidate)
        weight = 1.0 / probability if explored and probability > 0 else 1.0
        self.samples.append((features(candidate), int(correct), weight))
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
        sample_weights = np.array([w for _, _, w in self.samples])
        self.weights = _logistic(x, labels, sample_weights, self.weights)
        self.cut = choose_cut(x @ self.weights, labels, sample_weights, self.policy.target_error, self.policy.confidence_z)


def choose_cut(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], target: float,
               z: float) -> float | None:
    """The lowest score whose labelled candidates at or above it are wrong at most ``target`` of the time, to ``z``
    standard errors (weighted labels: the error uses their effective sample size); None when no score passes."""
    order = np.argsort(-scores, kind="stable")
    w = weights[order]
    total = np.cumsum(w)
    share = np.cumsum(w * (labels[order] == 0)) / total
    effective = total**2 / np.cumsum(w**2)
    bound = share + z * np.sqrt(np.maximum(share * (1 - share), 1.0 / effective) / effective)
    within = np.nonzero(bound <= target)[0]
    return float(scores[order][within[-1]]) if len(within) else None


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
