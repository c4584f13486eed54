"""One request's learned decision (``LearnedRouter.route``, a single-query path) is the batch prediction's pick.

Training, evaluation and the planner predict many prompts at once (``predict``);
the request path routes one at a time with fewer NumPy calls. Pure: random
routers of every learner shape, 200 unseen queries each.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from modelyard.routing.learned import LearnedRouter
from modelyard.routing.task_prior import TaskPrior
from modelyard.routing.text import routing_text
from modelyard.training.lexical_fit import fit_lexical

SHAPES = {
    "knn": {"linear": None},
    "knn+logistic": {"link": "logistic"},
    "logistic": {"link": "logistic", "use_knn": False},
    "knn+ridge": {"link": "identity"},
}


def router_of(shape: str, lexical: bool, seed: int) -> tuple[LearnedRouter, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(2, 6))) for _ in range(320)]
    vectors = rng.normal(size=(320, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    quality = (rng.random((120, 3)) < [0.3, 0.6, 0.8]).astype(np.float32)
    fit = LearnedRouter.fit_logistic if SHAPES[shape].get("link") == "logistic" else LearnedRouter.fit_linear
    options = {"linear": fit(vectors[:120], quality), **SHAPES[shape]}
    router = LearnedRouter(("a", "b", "c"), np.array([1.0, 3.0, 9.0], dtype=np.float32), vectors[:120], quality, k=16,
                           lexical=fit_lexical(texts[:120], quality) if lexical else None, **options)  # type: ignore[arg-type]
    return router, texts[120:], vectors[120:]


@pytest.mark.parametrize("lexical", [True, False])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_one_querys_route_is_the_batch_predictions_pick(shape: str, lexical: bool) -> None:
    router, texts, vectors = router_of(shape, lexical, seed=len(shape) + lexical)
    batch = router.predict(vectors, [routing_text(t) for t in texts])
    for target in (0.2, 0.6, 0.95):
        picks = router.choose_by_target(batch, target)
        for row, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            one = router.route(vector, target=target, prompt=text)
            assert one.model == router.models[picks[row]], (shape, lexical, target, row)
            assert one.predicted_quality == pytest.approx(float(batch[row, picks[row]]), abs=1e-6)
    lam = router.choose_by_lambda(batch, 0.5)
    assert [router.route(v, lam=0.5, prompt=t).model for t, v in zip(texts, vectors, strict=True)] == [router.models[i] for i in lam]


def test_a_task_views_route_is_the_batch_predictions_pick() -> None:
    router, texts, vectors = router_of("knn+logistic", True, seed=3)
    tasks = tuple(f"t{i % 4}" for i in range(len(router.embeddings)))
    viewed = dataclasses.replace(router, task_prior=TaskPrior.fit(router.embeddings, router.quality, tasks), task_weight=0.5)
    batch = viewed.predict(vectors, [routing_text(t) for t in texts])
    picks = viewed.choose_by_target(batch, 0.6)
    assert [viewed.route(v, target=0.6, prompt=t).model for t, v in zip(texts, vectors, strict=True)] == [viewed.models[i] for i in picks]
    assert batch.tolist() != router.predict(vectors, [routing_text(t) for t in texts]).tolist()  # the task view took part
