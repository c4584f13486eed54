"""The word view settles a learned pick without the embedding when no embedding view inside the router's band could change it.

Pure: hand-built intervals, then random routers whose every query lies inside
the band, where a settled pick must be exactly the pick the full router makes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from modelyard.config import AliasConfig, IntentConfig
from modelyard.pipeline import router_file
from modelyard.routing.learned import LearnedRouter, settled_by_lambda, settled_by_target
from modelyard.routing.router import PromptFeatures, settled_by_words
from modelyard.training import evaluate
from modelyard.training.datasets import OutcomeTable
from modelyard.training.lexical_fit import fit_lexical

F64 = np.float64


def test_the_cheapest_model_sure_to_reach_the_target_is_the_pick() -> None:
    costs = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    # Ceiling 0.5 x 1.0: the cheapest model's lowest prediction 0.6 reaches it whatever the others do.
    assert settled_by_target(np.array([0.6, 0.1, 0.9], F64), np.array([0.7, 0.2, 1.0], F64), costs, 0.5) == 0
    # The cheapest may or may not reach it: the embedding decides.
    assert settled_by_target(np.array([0.4, 0.1, 0.9], F64), np.array([0.6, 0.2, 1.0], F64), costs, 0.5) is None
    # The cheapest surely misses (0.2 < 0.5 x 0.9): the next one surely reaches.
    assert settled_by_target(np.array([0.1, 0.8, 0.9], F64), np.array([0.2, 0.85, 1.0], F64), costs, 0.5) == 1
    # Equal costs break ties by index, as argmin does.
    same = np.array([1.0, 1.0], dtype=np.float32)
    assert settled_by_target(np.array([0.9, 0.9], F64), np.array([0.95, 0.95], F64), same, 0.5) == 0


def test_lambda_settles_only_when_one_models_worst_score_beats_every_rivals_best() -> None:
    costs = np.array([1.0, 10.0], dtype=np.float32)
    low, high = np.array([0.5, 0.9], F64), np.array([0.6, 1.0], F64)
    assert settled_by_lambda(low, high, costs, 1.0) == 0  # 0.5 - 0.1 beats 1.0 - 1.0
    assert settled_by_lambda(low, high, costs, 0.0) == 1  # quality only: 0.9 beats 0.6
    assert settled_by_lambda(np.array([0.5, 0.55], F64), np.array([0.6, 0.65], F64), costs, 0.0) is None  # overlapping


def random_router(seed: int) -> tuple[LearnedRouter, list[str], np.ndarray]:
    """A router with a word view and an embedding view on random data, and 300 unseen queries (texts, vectors)."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(40)]

    def texts(n: int) -> list[str]:
        return [" ".join(rng.choice(vocab, size=rng.integers(2, 7))) for _ in range(n)]

    def vectors(n: int) -> np.ndarray:
        v = rng.normal(size=(n, 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    train_texts, train_vectors = texts(120), vectors(120)
    quality = (rng.random((120, 3)) < [0.4, 0.6, 0.8]).astype(np.float32)
    router = LearnedRouter(("a", "b", "c"), np.array([1.0, 3.0, 9.0], dtype=np.float32), train_vectors, quality, k=16,
                           linear=LearnedRouter.fit_logistic(train_vectors, quality), link="logistic", lexical=fit_lexical(train_texts, quality))
    return router, texts(300), vectors(300)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_settled_pick_is_the_full_routers_pick_for_every_query_inside_the_band(seed: int) -> None:
    router, texts, vectors = random_router(seed)
    assert router.lexical is not None
    gaps = router.embedded_view(vectors) - router.lexical.predict(texts)
    band = np.stack([np.quantile(gaps, 0.1, axis=0), np.quantile(gaps, 0.9, axis=0)]).astype(np.float32)
    banded = dataclasses.replace(router, word_band=band)
    inside = np.all((gaps >= band[0]) & (gaps <= band[1]), axis=1)
    settled = checked = 0
    for text, vector, within in zip(texts, vectors, inside, strict=True):
        words = banded.word_view(text)
        assert words is not None
        for goal in ({"target": 0.3}, {"target": 0.7}, {"target": 0.95}, {"lam": 0.0}, {"lam": 0.5}, {"lam": 3.0}):
            choice = banded.settle(words, **goal)
            full = banded.route(vector, prompt=text, **goal)
            assert banded.route(vector, prompt=text, words=words, **goal) == full  # handing in the word view changes nothing
            if choice is not None and within:
                checked += 1
                assert choice.model == full.model, (text, goal)
                assert choice.reason.endswith(":words")
            settled += choice is not None
    assert checked > 100 and settled < 300 * 6  # both kinds occur: some picks settled by words, some left to the embedding


def test_no_band_or_a_task_view_means_no_word_view(tmp_path: Path) -> None:
    router, texts, _ = random_router(0)
    assert router.word_view(texts[0]) is None  # no band: always embed
    band = np.array([[-0.1, -0.1, -0.1], [0.1, 0.1, 0.1]], dtype=np.float32)
    banded = dataclasses.replace(router, word_band=band)
    router_file.save(banded, tmp_path / "r.npz", {})
    loaded, _ = router_file.load(tmp_path / "r.npz")
    assert loaded.word_band is not None and np.array_equal(loaded.word_band, band)
    router_file.save(router, tmp_path / "old.npz", {})
    assert router_file.load(tmp_path / "old.npz")[0].word_band is None


def test_training_measures_the_band_out_of_fold() -> None:
    router, texts, vectors = random_router(3)
    costs = np.tile([1.0, 3.0, 9.0], (300, 1))
    quality = (np.random.default_rng(3).random((300, 3)) < [0.4, 0.6, 0.8]).astype(np.float64)
    table = OutcomeTable(texts, ("a", "b", "c"), quality, costs, "random")
    band = evaluate.word_band(table, vectors, None, 5)
    assert band is not None and band.shape == (2, 3) and np.all(band[0] < band[1])
    assert evaluate.word_band(table, vectors, None, 5, "knn+logistic") is None  # no word view
    assert evaluate.word_band(table.subset(np.arange(1)), vectors[:1], None, 5) is None  # too few prompts for folds


def test_eval_reports_the_share_the_words_settle_and_no_different_pick_inside_the_band() -> None:
    router, texts, vectors = random_router(4)
    assert router.lexical is not None
    gaps = router.embedded_view(vectors) - router.lexical.predict(texts)
    banded = dataclasses.replace(router, word_band=np.stack([gaps.min(axis=0), gaps.max(axis=0)]).astype(np.float32))
    predicted = evaluate.predict(banded, texts, vectors)
    words = evaluate.words_first(banded, texts, predicted, 0.3)
    expected = sum(banded.settle(banded.word_view(t), 0.3) is not None for t in texts)  # type: ignore[arg-type]
    assert words == {"settled_share": expected / 300, "settled": expected, "differing_picks": 0} and expected > 0
    assert evaluate.words_first(router, texts, predicted, 0.3) is None  # no band


def test_a_narrower_band_quantile_gives_a_narrower_band() -> None:
    router, texts, vectors = random_router(5)
    quality = (np.random.default_rng(5).random((300, 3)) < [0.4, 0.6, 0.8]).astype(np.float64)
    table = OutcomeTable(texts, ("a", "b", "c"), quality, np.tile([1.0, 3.0, 9.0], (300, 1)), "random")
    gaps = evaluate.word_gaps(table, vectors, None, 5)
    assert gaps is not None and gaps.shape == (300, 3)
    wide, narrow = evaluate.band_of(gaps, 0.99), evaluate.band_of(gaps, 0.8)
    assert np.all(wide[0] <= narrow[0]) and np.all(narrow[1] <= wide[1]) and np.any(wide[0] < narrow[0])
    def inside(band: np.ndarray) -> float:
        return float(np.mean(np.all((gaps >= band[0]) & (gaps <= band[1]), axis=1)))

    assert inside(narrow) < inside(wide) and inside(wide) > 0.9  # 1% out per model and side for the wide band
    band = evaluate.word_band(table, vectors, None, 5, quantile=0.8)
    assert band is not None and np.allclose(band, narrow)


def test_an_intent_naming_another_model_leaves_the_pick_to_the_vector() -> None:
    router, texts, vectors = random_router(6)
    assert router.lexical is not None
    gaps = router.embedded_view(vectors) - router.lexical.predict(texts)
    banded = dataclasses.replace(router, word_band=np.stack([gaps.min(axis=0), gaps.max(axis=0)]).astype(np.float32))
    settled = [(t, c.model) for t in texts if (c := banded.settle(banded.word_view(t), 0.3)) is not None]  # type: ignore[arg-type]
    assert settled, "the test needs a pick the words settle"
    text, model = settled[0]
    features = PromptFeatures(text=text, words=banded.word_view(text))
    plain = AliasConfig("a", ("a", "b", "c"), strategy="learned", quality_target=0.3)

    def with_intents(*models: str) -> AliasConfig:
        return dataclasses.replace(plain, intents=tuple(IntentConfig(f"i{n}", m, ("x",)) for n, m in enumerate(models)))

    assert settled_by_words(plain, banded, features) is not None
    # Intents are checked on the vector before the learned router: only those naming the pick's own model cannot change it.
    decision = settled_by_words(with_intents(model, model), banded, features)
    assert decision is not None and decision.model == model
    other = next(m for m in banded.models if m != model)
    assert settled_by_words(with_intents(model, other), banded, features) is None
