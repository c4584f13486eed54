"""Router figures that were not tuned on the folds they report, and the band an uninformative router reaches.

Three steps, each a plain function over an outcome table and its embeddings:

1. :func:`selection_split` sets aside a part of the prompts (by a salted hash of
   the prompt text, so it is the same on every run) on which the learner is
   chosen; that part is never reported.
2. :func:`choose_learner` picks, on that part, the learner whose cross-validated
   sweep has the largest AIQ.
3. :func:`repeated_cv` reports the chosen learner on the other part, cross-validated
   under several fold seeds, so every figure has a mean and a spread.

:func:`uninformative_band` answers "could a router that knows nothing do as
well?": per fold it predicts each model's training base rate plus noise with
the real router's spread, sends that through the same sweep, and returns the
distribution of its AIQ gain over the zero router (the single models' hull).
A gain is claimed only when it is positive and above that band's upper edge
under every fold seed (:func:`gain_claim`).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.training import evaluate
from modelyard.training.datasets import OutcomeTable

Embeddings = npt.NDArray[np.float32]
SELECTION_SALT = "modelyard-learner-selection"
SELECTION_FRACTION = 0.3
BAND_QUANTILES = (0.025, 0.975)


@dataclass(frozen=True)
class Split:
    """Row indices of the learner-selection part and of the reported part."""

    select: npt.NDArray[np.int64]
    report: npt.NDArray[np.int64]


def selection_split(prompts: Sequence[str], fraction: float = SELECTION_FRACTION, salt: str = SELECTION_SALT) -> Split:
    """Rows whose salted prompt hash falls below ``fraction`` select the learner; the rest are reported.

    The salt keeps this split independent of the train/test split of
    :func:`modelyard.training.datasets.split` (which hashes the bare prompt).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"selection fraction must lie in (0, 1), got {fraction}")
    units = np.array([_unit_hash(salt + "\x00" + p) for p in prompts])
    return Split(select=np.flatnonzero(units < fraction), report=np.flatnonzero(units >= fraction))


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def choose_learner(table: OutcomeTable, embeddings: Embeddings, learners: Sequence[str], folds: int, target: float, seed: int = 0) -> tuple[str, dict[str, float]]:
    """The learner with the largest cross-validated AIQ on ``table`` (ties go to the earlier one), and every learner's AIQ."""
    scores: dict[str, float] = {}
    for learner in learners:
        router, predicted = evaluate.cross_validate(table, embeddings, None, folds, learner, seed)
        scores[learner] = float(evaluate.report(table, router, predicted, target)["aiq_router"])
    best = max(learners, key=lambda name: (scores[name], -list(learners).index(name)))
    return best, scores


def repeated_cv(table: OutcomeTable, embeddings: Embeddings, learner: str, folds: int, seeds: Sequence[int], target: float) -> list[dict[str, Any]]:
    """One :func:`evaluate.report` per fold seed (each prompt predicted by a router that never saw it), plus its out-of-fold predictions' spread."""
    reports = []
    for seed in seeds:
        router, predicted = evaluate.cross_validate(table, embeddings, None, folds, learner, seed)
        result = evaluate.report(table, router, predicted, target)
        result["prediction_spread"] = [float(s) for s in predicted.std(axis=0)]
        result["seed"] = seed
        reports.append(result)
    return reports


def uninformative_predictions(table: OutcomeTable, spread: npt.NDArray[np.float64], folds: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Per fold, each model's base rate on the training rows plus Gaussian noise of ``spread`` (one per model): a router that knows nothing of the prompt."""
    n = len(table.prompts)
    order = rng.permutation(n)  # not evaluate.fold_splits: the noise below draws from the same generator, and the band's figures with it
    predicted = np.zeros(table.quality.shape, dtype=np.float32)
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        rates = table.quality[train].mean(axis=0)
        predicted[test] = (rates[None, :] + rng.normal(0.0, 1.0, (len(test), len(rates))) * spread[None, :]).astype(np.float32)
    return predicted


def uninformative_band(table: OutcomeTable, spread: npt.NDArray[np.float64], folds: int, target: float, draws: int, seed: int = 0) -> dict[str, Any]:
    """AIQ gain over the zero router of ``draws`` uninformative routers through the same sweep: its quantiles and the draws."""
    router = evaluate.sweep_router(table)
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(draws):
        result = evaluate.report(table, router, uninformative_predictions(table, spread, folds, rng), target)
        gains.append(float(result["aiq_router"] - result["aiq_best_single"]))
    low, high = (float(np.quantile(gains, q)) for q in BAND_QUANTILES)
    return {"draws": draws, "quantiles": list(BAND_QUANTILES), "gain_low": low, "gain_high": high, "gain_median": float(np.median(gains)), "gains": gains}


def spread_of(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of repeated figures."""
    return {
        "mean": float(statistics.fmean(values)),
        "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
        "min": float(min(values)),
        "max": float(max(values)),
    }


def gain_claim(gains: Sequence[float], band: dict[str, Any]) -> bool:
    """True when every seed's AIQ gain over the zero router is positive and above the uninformative band's upper edge."""
    return bool(gains) and min(gains) > max(0.0, band["gain_high"])


def task_label_cv(table: OutcomeTable, folds: int, seeds: Sequence[int], target: float) -> list[float]:
    """The task-label router's AIQ under each fold seed: each prompt is predicted by its task's mean outcomes on the other folds."""
    router = evaluate.sweep_router(table)
    out = []
    for seed in seeds:
        predicted = np.zeros(table.quality.shape, dtype=np.float32)
        for test, train in evaluate.fold_splits(len(table.prompts), folds, seed):
            predicted[test] = evaluate.task_label_predictions(table.subset(train), table.subset(test))
        out.append(float(evaluate.report(table, router, predicted, target)["aiq_router"]))
    return out
