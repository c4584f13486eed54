"""The learned cost/quality router: plain arrays in, a model choice out (no I/O).

For a prompt embedding it predicts, for every candidate model, the
probability of a good answer: a similarity-weighted vote of the k most similar
training prompts (cosine on normalised MiniLM vectors), shrunk toward the
model's overall success rate when the neighbours are few or far, averaged with
a ridge linear probe on the same embedding when the router has one (the two
err differently: the blend was better than either in cross-validation). It then picks
the cheapest model whose prediction reaches ``target`` of the best prediction,
or the model maximising ``quality - lam * cost``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]


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
    linear: Array | None = None  # (d + 1, m) ridge weights, bias last

    @staticmethod
    def fit_linear(embeddings: Array, quality: Array, alpha: float = 10.0) -> Array:
        """Ridge regression of each model's outcome on the embedding (a closed form, no iterations)."""
        x = np.hstack([embeddings, np.ones((len(embeddings), 1), dtype=np.float32)]).astype(np.float64)
        weights = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ quality.astype(np.float64))
        return weights.astype(np.float32)

    @property
    def base_rates(self) -> Array:
        return self.quality.mean(axis=0).astype(np.float32)

    def predict(self, queries: Array) -> Array:
        """Predicted probability of a good answer, (q, m), for normalised query embeddings (q, d)."""
        sims = queries @ self.embeddings.T
        k = min(self.k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(sims, idx, axis=1)
        weights = np.exp(self.sharpness * (near - near.max(axis=1, keepdims=True)))
        votes = np.einsum("qk,qkm->qm", weights, self.quality[idx])
        total = weights.sum(axis=1, keepdims=True)
        knn = (votes + self.prior_weight * self.base_rates) / (total + self.prior_weight)
        if self.linear is None:
            return knn.astype(np.float32)
        probe = np.clip(queries @ self.linear[:-1] + self.linear[-1], 0.0, 1.0)
        return ((knn + probe) / 2).astype(np.float32)

    def choose_by_target(self, predicted: Array, target: float) -> npt.NDArray[np.int64]:
        """Per row: the cheapest model predicted to reach ``target`` x the best prediction (0..1)."""
        reach = predicted >= target * predicted.max(axis=1, keepdims=True) - 1e-9
        masked = np.where(reach, self.costs[None, :], np.inf)
        return np.argmin(masked, axis=1)

    def choose_by_lambda(self, predicted: Array, lam: float) -> npt.NDArray[np.int64]:
        """Per row: argmax of predicted quality - lam x (cost / the priciest model's cost)."""
        scale = float(self.costs.max()) or 1.0
        return np.argmax(predicted - lam * (self.costs[None, :] / scale), axis=1)

    def route(self, query: Array, target: float) -> RouteChoice:
        predicted = self.predict(query[None, :])[0]
        index = int(self.choose_by_target(predicted[None, :], target)[0])
        return RouteChoice(self.models[index], float(predicted[index]), f"learned:target={target:g}")
