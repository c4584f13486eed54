"""The word view of the learned router: hashed grams, TF-IDF, a logistic probe; hand-built and fitted."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from modelyard.pipeline import router_file
from modelyard.routing.learned import LearnedRouter
from modelyard.routing.lexical import HASH_SPACE, LexicalProbe, gram_counts
from modelyard.training.lexical_fit import fit_lexical


def bucket(gram: str) -> int:
    return zlib.crc32(gram.encode()) % HASH_SPACE


def test_gram_counts_are_stable_hashes_of_lowercased_unigrams_and_bigrams() -> None:
    counts = gram_counts("Hard, hard")
    assert counts == {bucket("hard"): 1 + math.log(2), bucket(","): 1.0, bucket("hard ,"): 1.0, bucket(", hard"): 1.0}


def test_hand_built_probe() -> None:
    buckets = np.array(sorted([bucket("integral"), bucket("hello")]), dtype=np.int64)
    weights = np.zeros((3, 2), dtype=np.float32)
    weights[list(buckets).index(bucket("integral")), 0] = -8.0  # the cheap model fails integrals
    weights[-1] = [2.0, 2.0]
    probe = LexicalProbe(buckets, np.ones(2, dtype=np.float32), weights)
    predicted = probe.predict(["Compute the integral", "hello", "nothing known here"])
    assert predicted[0, 0] < 0.01 < 0.85 < predicted[0, 1]
    assert predicted[1] == pytest.approx([1 / (1 + math.exp(-2))] * 2)
    assert predicted[2] == pytest.approx([1 / (1 + math.exp(-2))] * 2)  # unseen words: the bias alone


def training_table() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    topics = ["integral of x squared", "derivative of sine", "capital of France", "colour of the sky", "name a fruit"]
    texts, quality = [], []
    for i in range(200):
        topic = topics[i % len(topics)]
        texts.append(f"{topic} question {rng.integers(1000)}")
        hard = topic.startswith(("integral", "derivative"))
        quality.append([0.0 if hard else 1.0, 1.0 if rng.random() < 0.9 else 0.0, 0.5])  # a soft-label third column
    return texts, np.array(quality, dtype=np.float32)


def test_fit_learns_which_words_make_the_cheap_model_fail() -> None:
    texts, quality = training_table()
    probe = fit_lexical(texts, quality)
    predicted = probe.predict(["what is the integral of x squared", "what is the capital of France"])
    assert predicted[0, 0] < 0.3 and predicted[1, 0] > 0.7
    assert predicted[:, 2] == pytest.approx([0.5, 0.5], abs=0.1)  # 0.5 everywhere: nothing to learn
    constant = fit_lexical(texts, np.ones((200, 1), dtype=np.float32))
    assert constant.predict(["anything"])[0, 0] > 0.99  # one class only: the base rate


def test_router_file_keeps_the_word_view(tmp_path: Path) -> None:
    texts, quality = training_table()
    emb = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    router = LearnedRouter(("cheap", "strong", "third"), np.array([1, 5, 9], dtype=np.float32), emb, quality, k=16, lexical=fit_lexical(texts, quality))
    router_file.save(router, tmp_path / "r.npz", {})
    loaded, _ = router_file.load(tmp_path / "r.npz")
    assert loaded.lexical is not None
    prompts = ["integral of x squared question 5", "name a fruit question 9"]
    assert np.allclose(loaded.predict(emb[:2], prompts), router.predict(emb[:2], prompts), atol=2e-2)
    choice = loaded.route(emb[0], target=0.9, prompt="what is the integral of x squared")
    assert choice.model == "strong"  # the words say the cheap model fails here
