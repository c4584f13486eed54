"""Router metrics against hand-computed examples, and the learned router's decisions on hand-built data."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.routing.learned import LearnedRouter
from modelyard.training.metrics import aiq, apgr, cpt, oracle_choice, outcome, pgr_curve


def test_outcome_and_oracle() -> None:
    quality = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    cost = np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    assert outcome(quality, cost, np.array([0, 1, 0])) == (pytest.approx(2 / 3), pytest.approx(4.0))
    assert list(oracle_choice(quality, cost)) == [0, 1, 0]  # cheapest correct; nobody right: cheapest


def test_aiq_single_point_and_hull() -> None:
    # One model at cost 1 with quality 0.5, compared over [1, 3]: flat 0.5 -> AIQ 0.5.
    assert aiq([(1.0, 0.5)], 1.0, 3.0) == pytest.approx(0.5)
    # Points (1, 0.2), (2, 0.8), (3, 0.6): hull (1,.2)-(2,.8), then flat .8 to 3.
    # Area = 1 * (0.2 + 0.8) / 2 + 1 * 0.8 = 1.3 over width 2 -> 0.65. The (3, 0.6) point adds nothing.
    assert aiq([(1.0, 0.2), (2.0, 0.8), (3.0, 0.6)], 1.0, 3.0) == pytest.approx(0.65)
    # A point inside the hull is ignored: (1.5, 0.3) lies below the (1,.2)-(2,.8) segment.
    assert aiq([(1.0, 0.2), (1.5, 0.3), (2.0, 0.8)], 1.0, 3.0) == pytest.approx(0.65)


def test_pgr_apgr_cpt() -> None:
    weak = np.array([1.0, 0.0, 0.0, 1.0])
    strong = np.array([1.0, 1.0, 1.0, 1.0])  # strong helps on prompts 1 and 2
    perfect = pgr_curve(np.array([0.0, 1.0, 1.0, 0.0]), weak, strong)
    assert perfect[0] == (0.0, 0.0) and perfect[2] == (0.5, 1.0) and perfect[-1] == (1.0, 1.0)
    # PGR: 0 -> 0.5 -> 1 over the first half, then flat: area = 0.25*0.25 + 0.25*0.75 + 0.5*1 = 0.75
    assert apgr(perfect) == pytest.approx(0.75)
    assert cpt(perfect, 0.5) == 0.25 and cpt(perfect, 0.8) == 0.5
    worst = pgr_curve(np.array([1.0, 0.0, 0.0, 1.0]), weak, strong)
    assert apgr(worst) == pytest.approx(0.25)  # calls the useless half first


def test_learned_router_decisions() -> None:
    emb = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    quality = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], dtype=np.float32)  # the cheap model fails the second cluster
    router = LearnedRouter(("cheap", "strong"), np.array([1.0, 10.0], dtype=np.float32), emb, quality, k=2, prior_weight=0.0)
    predicted = router.predict(np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert predicted[0] == pytest.approx([1.0, 1.0]) and predicted[1] == pytest.approx([0.0, 1.0])
    assert list(router.choose_by_target(predicted, 0.9)) == [0, 1]
    assert list(router.choose_by_lambda(predicted, 0.0)) == [0, 1]  # ties go to the first (cheap) model
    assert list(router.choose_by_lambda(predicted, 2.0)) == [0, 0]  # cost dominates
    choice = router.route(np.array([0, 1], dtype=np.float32), 0.9)
    assert choice.model == "strong" and choice.predicted_quality == pytest.approx(1.0)


def test_linear_probe_learns_a_separable_split() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cheap_ok = (emb[:, 0] > 0).astype(np.float32)
    quality = np.stack([cheap_ok, np.ones(400, dtype=np.float32)], axis=1)  # the cheap model fails when x0 <= 0
    weights = LearnedRouter.fit_linear(emb, quality, alpha=0.1)
    probe = emb @ weights[:-1] + weights[-1]
    assert np.corrcoef(probe[:, 0], cheap_ok)[0, 1] > 0.75
    assert np.allclose(probe[:, 1], 1.0, atol=0.05)
    blended = LearnedRouter(("cheap", "strong"), np.array([1.0, 10.0], dtype=np.float32), emb, quality, k=8, linear=weights)
    plain = LearnedRouter(("cheap", "strong"), np.array([1.0, 10.0], dtype=np.float32), emb, quality, k=8)
    gap_blended = blended.predict(emb)[:, 0]
    assert gap_blended[cheap_ok == 1].mean() - gap_blended[cheap_ok == 0].mean() > 0.5
    assert not np.allclose(gap_blended, plain.predict(emb)[:, 0])  # the probe takes part


def test_the_sweep_spans_the_cost_range_even_when_the_cheap_model_looks_much_worse() -> None:
    # The AIQ is taken from the cheapest single model's cost; a sweep that never sends
    # everything to the cheap model would score zero over the start of that range.
    from modelyard.training.datasets import OutcomeTable
    from modelyard.training.evaluate import report

    quality = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    cost = np.array([[0.95, 1.0]] * 4)  # close in price: only a high price on cost sends everything to the cheap one
    table = OutcomeTable(["a", "b", "c", "d"], ("cheap", "strong"), quality, cost, "hand-built")
    router = LearnedRouter(models=table.models, costs=np.array([0.95, 1.0], dtype=np.float32),
                           embeddings=np.eye(4, dtype=np.float32), quality=quality.astype(np.float32))
    predicted = np.array([[0.05, 0.95]] * 4, dtype=np.float32)  # the strong model looks 0.9 better everywhere
    result = report(table, router, predicted, target=0.9)
    costs = [point["cost"] for point in result["sweep"]]
    assert min(costs) == pytest.approx(0.95) and max(costs) == pytest.approx(1.0)
