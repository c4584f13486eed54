"""Learner selection on a part never reported, repeated fold seeds, and the uninformative-router band (modelyard.training.selection)."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.training import selection
from modelyard.training.datasets import OutcomeTable


def _table(informative: bool, n: int = 400, seed: int = 1) -> tuple[OutcomeTable, np.ndarray]:
    """Two models, the cheap one right on half the prompts: on the prompts the embedding marks (informative) or on random ones."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cheap_right = vectors[:, 0] > 0 if informative else rng.random(n) < 0.5
    quality = np.stack([cheap_right.astype(float), np.ones(n) * 0.9], axis=1)
    cost = np.tile([1e-6, 1e-5], (n, 1))
    prompts = [f"prompt {i}" for i in range(n)]
    return OutcomeTable(prompts, ("cheap", "strong"), quality, cost, "synthetic"), vectors


def test_selection_split_is_fixed_disjoint_and_complete() -> None:
    prompts = [f"question {i}" for i in range(1000)]
    first, again = selection.selection_split(prompts), selection.selection_split(list(reversed(prompts)))
    assert set(first.select).isdisjoint(first.report)
    assert sorted([*first.select, *first.report]) == list(range(1000))
    assert 0.25 < len(first.select) / 1000 < 0.35
    # the same prompts select, whatever their order
    assert {prompts[i] for i in first.select} == {list(reversed(prompts))[i] for i in again.select}
    with pytest.raises(ValueError):
        selection.selection_split(prompts, fraction=1.0)


def test_choose_learner_scores_every_candidate_and_picks_the_largest_aiq() -> None:
    table, vectors = _table(informative=True)
    chosen, scores = selection.choose_learner(table, vectors, ["knn", "ridge"], folds=4, target=0.9)
    assert set(scores) == {"knn", "ridge"}
    assert scores[chosen] == max(scores.values())


def _gains_and_band(informative: bool) -> tuple[list[float], dict[str, float]]:
    table, vectors = _table(informative)
    reports = selection.repeated_cv(table, vectors, "knn", folds=4, seeds=range(3), target=0.9)
    assert [r["seed"] for r in reports] == [0, 1, 2]
    spread = np.mean([r["prediction_spread"] for r in reports], axis=0)
    band = selection.uninformative_band(table, spread, folds=4, target=0.9, draws=20)
    assert band["gain_low"] <= band["gain_median"] <= band["gain_high"]
    return [r["aiq_router"] - r["aiq_best_single"] for r in reports], band


def test_a_router_that_reads_the_prompt_is_claimed_above_the_band() -> None:
    gains, band = _gains_and_band(informative=True)
    assert selection.gain_claim(gains, band), (gains, band)


def test_a_router_on_noise_is_not_claimed() -> None:
    gains, band = _gains_and_band(informative=False)
    assert not selection.gain_claim(gains, band), (gains, band)


def test_spread_of_repeats() -> None:
    assert selection.spread_of([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert selection.spread_of([0.5])["std"] == 0.0
