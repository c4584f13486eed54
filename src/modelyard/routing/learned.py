"""The learned cost/quality router: plain arrays in, a model choice out (no I/O).

For a prompt embedding it predicts, for every candidate model, the
probability of a good answer: a similarity-weighted vote of the k most similar
training prompts (cosine on normalised MiniLM vectors), shrunk toward the
model's overall success rate when the neighbours are few or far, averaged with
a ridge linear probe on the same embedding when the router has one (the two
err differently: the blend was better than either in cross-validation). It then picks
the cheapest model whose prediction reaches ``target`` of the best prediction,
or the model maximising ``quality - lam * cost``. With a task prior (see
:mod:`modelyard.routing.task_prior`) the prediction is blended with the
expected outcome on the prompt's inferred task, ``task_weight`` of it.

With a word view and a ``word_band`` (how far the embedding view strayed from
the word view on prompts it was not trained on), :meth:`LearnedRouter.settle`
decides from the words alone when no embedding view inside the band could
change the pick, so the serving path can skip the embedding model for that
prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.routing.lexical import LexicalProbe
from modelyard.routing.task_prior import TaskPrior
from modelyard.routing.text import routing_text

Array = npt.NDArray[np.float32]
# Predictions are float32 and the band arithmetic float64: a pick is settled only with this much room to spare.
SETTLE_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class RouteChoice:
    model: str
    predicted_quality: float
    reason: str


@dataclass(frozen=True)
class LearnedRouter:
    models: tuple[str, ...]
    costs: Array  # relative cost per call of each model (m,)
    embeddings: Array  # training prompts (n, d), L2-normalised
    quality: Array  # training outcomes (n, m) in 0..1
    k: int = 32
    prior_weight: float = 2.0
    sharpness: float = 8.0
    linear: Array | None = None  # (d + 1, m) probe weights, bias last
    link: str = "identity"  # identity: a ridge probe (clipped to 0..1); logistic: a logistic-regression probe
    use_knn: bool = True  # false: the probe alone
    lexical: LexicalProbe | None = None  # the word view, averaged with the embedding view when texts are given
    task_prior: TaskPrior | None = None  # the task view, blended in with task_weight (1.0: the task view alone)
    task_weight: float = 0.5
    word_band: Array | None = None  # (2, m): low and high quantile of (embedding view - word view) out of fold; see settle

    @staticmethod
    def fit_linear(embeddings: Array, quality: Array, alpha: float = 10.0) -> Array:
        """Ridge regression of each model's outcome on the embedding (a closed form, no iterations)."""
        x = _with_bias(embeddings)
        weights = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ quality.astype(np.float64))
        return weights.astype(np.float32)

    @staticmethod
    def fit_logistic(embeddings: Array, quality: Array, alpha: float = 3.0, iterations: int = 25) -> Array:
        """L2-regularised logistic regression of each model's outcome (0..1, soft labels allowed), by Newton's method."""
        x = _with_bias(embeddings)
        penalty = alpha * np.eye(x.shape[1])
        penalty[-1, -1] = 0.0  # the bias is not shrunk
        weights = np.zeros((x.shape[1], quality.shape[1]))
        for j in range(quality.shape[1]):
            y = quality[:, j].astype(np.float64)
            rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
            w = np.zeros(x.shape[1])
            w[-1] = np.log(rate / (1 - rate))
            for _ in range(iterations):
                p = 1.0 / (1.0 + np.exp(-(x @ w)))
                step = np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x + penalty, x.T @ (p - y) + penalty @ w)
                w -= step
                if np.abs(step).max() < 1e-6:
                    break
            weights[:, j] = w
        return weights.astype(np.float32)

    @cached_property
    def base_rates(self) -> Array:
        return self.quality.mean(axis=0).astype(np.float32)

    def predict(self, queries: Array, texts: list[str] | None = None, words: Array | None = None) -> Array:
        """Predicted probability of a good answer, (q, m), for normalised query embeddings (q, d).

        With a lexical probe and the prompts' routing texts (or their word view,
        ``words`` (q, m), already computed), the embedding view's prediction and
        the word view's are averaged.
        """
        if self.task_prior is not None and self.task_weight >= 1.0:
            return self.task_prior.predict(queries)
        embedded = self.embedded_view(queries)
        if self.lexical is not None and (words is not None or texts is not None):
            seen = words if words is not None else self.lexical.predict(texts or [])
            embedded = ((embedded + seen) / 2).astype(np.float32)
        if self.task_prior is None:
            return embedded
        return ((1.0 - self.task_weight) * embedded + self.task_weight * self.task_prior.predict(queries)).astype(np.float32)

    def embedded_view(self, queries: Array) -> Array:
        """The embedding view's prediction (q, m): the neighbour vote, the probe, or their average."""
        if self.linear is None:
            return self._knn(queries)
        scores = queries @ self.linear[:-1] + self.linear[-1]
        probe = 1.0 / (1.0 + np.exp(-scores)) if self.link == "logistic" else np.clip(scores, 0.0, 1.0)
        if not self.use_knn:
            return probe.astype(np.float32)
        return ((self._knn(queries) + probe) / 2).astype(np.float32)

    def _knn(self, queries: Array) -> Array:
        """A similarity-weighted vote of the k nearest training prompts, shrunk toward each model's base rate."""
        sims = queries @ self.embeddings.T
        k = min(self.k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(sims, idx, axis=1)
        weights = np.exp(self.sharpness * (near - near.max(axis=1, keepdims=True)))
        votes = np.einsum("qk,qkm->qm", weights, self.quality[idx])
        total = weights.sum(axis=1, keepdims=True)
        knn = (votes + self.prior_weight * self.base_rates) / (total + self.prior_weight)
        return knn.astype(np.float32)

    def _predict_one(self, query: Array, words: Array | None) -> Array:
        """:meth:`predict` for one query (d,) without a task view, in fewer NumPy calls: at low load each call
        on the request path runs with cold caches and costs several times its warm time (bench/cold_path.py)."""
        view: npt.NDArray[np.floating[Any]]
        if self.linear is None:
            view = self._knn_one(query)
        else:
            scores = query @ self.linear[:-1] + self.linear[-1]
            probe = 1.0 / (1.0 + np.exp(-scores)) if self.link == "logistic" else np.clip(scores, 0.0, 1.0)
            view = (self._knn_one(query) + probe) / 2 if self.use_knn else probe
        if self.lexical is not None and words is not None:
            view = (view.astype(np.float32) + words) / 2
        return view.astype(np.float32)

    def _knn_one(self, query: Array) -> Array:
        """:meth:`_knn` for one query (d,)."""
        sims = self.embeddings @ query
        k = min(self.k, len(sims))
        idx = np.argpartition(-sims, k - 1)[:k]
        near = sims[idx]
        weights = np.exp(self.sharpness * (near - near.max()))
        knn = (weights @ self.quality[idx] + self.prior_weight * self.base_rates) / (weights.sum() + self.prior_weight)
        return knn.astype(np.float32)

    def choose_by_target(self, predicted: Array, target: float) -> npt.NDArray[np.int64]:
        """Per row: the cheapest model predicted to reach ``target`` x the best prediction (0..1)."""
        reach = predicted >= target * predicted.max(axis=1, keepdims=True) - 1e-9
        masked = np.where(reach, self.costs[None, :], np.inf)
        return np.argmin(masked, axis=1)

    def choose_by_lambda(self, predicted: Array, lam: float) -> npt.NDArray[np.int64]:
        """Per row: argmax of predicted quality - lam x (cost / the priciest model's cost)."""
        scale = float(self.costs.max()) or 1.0
        return np.argmax(predicted - lam * (self.costs[None, :] / scale), axis=1)

    def route(self, query: Array, target: float | None = None, lam: float | None = None, prompt: str | None = None,
              words: Array | None = None) -> RouteChoice:
        """One prompt's choice, by ``target`` (0..1 of the best prediction) or else by ``lam``; ``words`` is the prompt's
        :meth:`word_view` when the caller already has it."""
        if self.task_prior is None:
            if words is None and prompt is not None and self.lexical is not None:
                words = self.lexical.predict([routing_text(prompt)])[0]
            predicted = self._predict_one(query, words)
        else:
            texts = None if prompt is None else [routing_text(prompt)]
            predicted = self.predict(query[None, :], texts, None if words is None else words[None, :])[0]
        if target is not None:
            index, reason = int(self.choose_by_target(predicted[None, :], target)[0]), f"learned:target={target:g}"
        else:
            index, reason = int(self.choose_by_lambda(predicted[None, :], lam or 0.0)[0]), f"learned:lambda={lam or 0.0:g}"
        return RouteChoice(self.models[index], float(predicted[index]), reason)

    @property
    def settles_by_words(self) -> bool:
        """Whether :meth:`settle` can decide: a word view, a band, and no task view (which the band does not cover)."""
        return self.lexical is not None and self.word_band is not None and self.task_prior is None

    def word_view(self, prompt: str) -> Array | None:
        """The word view's prediction (m,) for a prompt, when this router can settle picks by words (see :meth:`settle`)."""
        if self.lexical is None or not self.settles_by_words:
            return None
        return self.lexical.predict([routing_text(prompt)])[0]

    def settle(self, words: Array, target: float | None = None, lam: float | None = None) -> RouteChoice | None:
        """The pick :meth:`route` makes for every embedding view within ``word_band`` of ``words``; None when one could change it.

        The blend is (embedding view + word view) / 2, so with the embedding view
        between ``words + band[0]`` and ``words + band[1]`` each model's
        prediction lies between ``words + band[0] / 2`` and ``words + band[1] / 2``.
        The predicted quality given is the middle of that range.
        """
        if self.word_band is None or not self.settles_by_words:
            return None
        low = words.astype(np.float64) + self.word_band[0] / 2
        high = words.astype(np.float64) + self.word_band[1] / 2
        if target is not None:
            index, reason = settled_by_target(low, high, self.costs, target), f"learned:target={target:g}:words"
        else:
            index, reason = settled_by_lambda(low, high, self.costs, lam or 0.0), f"learned:lambda={lam or 0.0:g}:words"
        if index is None:
            return None
        return RouteChoice(self.models[index], float((low[index] + high[index]) / 2), reason)


def settled_by_target(low: npt.NDArray[np.float64], high: npt.NDArray[np.float64], costs: Array, target: float) -> int | None:
    """The model :meth:`LearnedRouter.choose_by_target` picks for every prediction between ``low`` and ``high``, or None.

    Going from the cheapest model up (ties by index, as ``argmin`` breaks
    them): one that reaches the target whatever the predictions is the pick;
    one that may or may not reach it leaves the pick open.
    """
    ceiling, floor = target * float(high.max()), target * float(low.max())
    for j in np.argsort(costs, kind="stable"):
        if low[j] >= ceiling + SETTLE_SLACK:
            return int(j)
        if high[j] >= floor - 1e-9 - SETTLE_SLACK:
            return None
    return None


def settled_by_lambda(low: npt.NDArray[np.float64], high: npt.NDArray[np.float64], costs: Array, lam: float) -> int | None:
    """The model :meth:`LearnedRouter.choose_by_lambda` picks for every prediction between ``low`` and ``high``, or None."""
    penalty = lam * (costs.astype(np.float64) / (float(costs.max()) or 1.0))
    worst, best = low - penalty, high - penalty
    pick = int(np.argmax(worst))
    rivals = np.delete(best, pick)
    return pick if not len(rivals) or worst[pick] > float(rivals.max()) + SETTLE_SLACK else None


def _with_bias(embeddings: Array) -> npt.NDArray[np.float64]:
    """The design matrix: the embedding and a constant column (the bias is the last weight)."""
    return np.hstack([embeddings, np.ones((len(embeddings), 1), dtype=np.float32)]).astype(np.float64)
