"""The task view of the learned router: which known task a prompt resembles, and how each model does on it.

Routing tables are made of tasks (data sets, subjects, clusters), and a
router told only the task label is a strong baseline: a task's mean outcome
per model is estimated from every prompt of the task, while a prompt's own
neighbours are few and noisy. A served prompt carries no label, so the label
is inferred: a soft nearest-centroid vote over the tasks' mean embeddings.
The prior is each task's per-model mean outcome, weighted by that vote.
Plain arrays in and out; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
SHARPNESS = 50.0  # cosine gaps between task centroids are small (0.05-0.3); this makes the vote near-hard


@dataclass(frozen=True)
class TaskPrior:
    names: tuple[str, ...]
    centroids: Array  # (t, d), L2-normalised mean embedding of each task's prompts
    quality: Array  # (t, m), each task's mean outcome per model
    sharpness: float = SHARPNESS

    @staticmethod
    def fit(embeddings: Array, quality: Array, tasks: tuple[str, ...] | list[str]) -> TaskPrior:
        """Centroids and per-model mean outcomes of each task present in the training rows."""
        names = tuple(sorted(set(tasks)))
        labels = np.array([names.index(t) for t in tasks])
        centroids = np.stack([embeddings[labels == i].mean(axis=0) for i in range(len(names))])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        means = np.stack([quality[labels == i].mean(axis=0) for i in range(len(names))])
        return TaskPrior(names, centroids.astype(np.float32), means.astype(np.float32))

    def weights(self, queries: Array) -> Array:
        """(q, t): how much each task explains each query (a softmax over cosine to the centroids)."""
        sims = queries @ self.centroids.T
        scores = np.exp(self.sharpness * (sims - sims.max(axis=1, keepdims=True)))
        return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, queries: Array) -> Array:
        """(q, m): the expected outcome of each model on each query's likely task."""
        return (self.weights(queries) @ self.quality).astype(np.float32)

    def label(self, queries: Array) -> list[str]:
        """The most likely task of each query."""
        return [self.names[i] for i in np.argmax(queries @ self.centroids.T, axis=1)]
