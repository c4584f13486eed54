"""The task view of the learned router, the task-label router, and per-task reports (plain arrays, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelyard.pipeline import router_file
from modelyard.routing.task_prior import TaskPrior
from modelyard.training import evaluate, selection
from modelyard.training.datasets import OutcomeTable


def _tasks_table(n_per_task: int = 120, seed: int = 3) -> tuple[OutcomeTable, np.ndarray]:
    """Three tasks, each a cluster in embedding space: the cheap model is as good as the strong one on 'easy' only."""
    rng = np.random.default_rng(seed)
    centres = np.eye(6, dtype=np.float32)[:3]
    rows, tasks, quality = [], [], []
    for t, name in enumerate(("easy", "hard", "mixed")):
        vec = centres[t] + 0.35 * rng.normal(size=(n_per_task, 6)).astype(np.float32)
        rows.append(vec)
        tasks += [name] * n_per_task
        cheap = {"easy": 0.9, "hard": 0.1, "mixed": 0.5}[name]
        quality.append(np.stack([rng.random(n_per_task) < cheap, rng.random(n_per_task) < 0.9], axis=1).astype(float))
    vectors = np.vstack(rows)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q = np.vstack(quality)
    cost = np.tile([1e-6, 1e-5], (len(q), 1))
    return OutcomeTable([f"p{i}" for i in range(len(q))], ("cheap", "strong"), q, cost, "synthetic", tuple(tasks)), vectors.astype(np.float32)


def test_task_prior_infers_the_task_and_predicts_its_mean_outcomes() -> None:
    table, vectors = _tasks_table()
    prior = TaskPrior.fit(vectors, table.quality.astype(np.float32), table.tasks)
    assert prior.names == ("easy", "hard", "mixed")
    accuracy = np.mean([a == b for a, b in zip(prior.label(vectors), table.tasks, strict=True)])
    assert accuracy > 0.9
    easy = vectors[: 120]
    predicted = prior.predict(easy).mean(axis=0)
    assert predicted[0] == pytest.approx(table.quality[:120, 0].mean(), abs=0.05)
    assert np.allclose(prior.weights(vectors).sum(axis=1), 1.0, atol=1e-5)


def test_task_learners_need_labels_and_blend_the_views() -> None:
    table, vectors = _tasks_table()
    alone = evaluate.fit(table, vectors, None, "task")
    assert alone.task_prior is not None and alone.task_weight == 1.0
    assert np.allclose(alone.predict(vectors[:5]), alone.task_prior.predict(vectors[:5]))
    blend = evaluate.fit(table, vectors, None, "ridge+task")
    plain = evaluate.fit(table, vectors, None, "ridge")
    expected = 0.5 * plain.predict(vectors[:5]) + 0.5 * blend.task_prior.predict(vectors[:5])  # type: ignore[union-attr]
    assert np.allclose(blend.predict(vectors[:5]), expected, atol=1e-6)
    unlabelled = OutcomeTable(table.prompts, table.models, table.quality, table.cost, "no labels")
    with pytest.raises(ValueError, match="needs task labels"):
        evaluate.fit(unlabelled, vectors, None, "knn+logistic+task")


def test_router_file_keeps_the_task_view(tmp_path: Path) -> None:
    table, vectors = _tasks_table()
    router = evaluate.fit(table, vectors, None, "ridge+task")
    router_file.save(router, tmp_path / "r.npz", {"target": 0.7})
    loaded, header = router_file.load(tmp_path / "r.npz")
    assert loaded.task_prior is not None and loaded.task_prior.names == ("easy", "hard", "mixed") and header["tasks"] == ["easy", "hard", "mixed"]
    assert np.allclose(loaded.predict(vectors[:20]), router.predict(vectors[:20]), atol=2e-2)


def test_the_task_label_router_routes_each_task_to_its_best_value_model() -> None:
    table, _ = _tasks_table()
    train, test = table.subset(np.arange(0, 360, 2)), table.subset(np.arange(1, 360, 2))
    predicted = evaluate.task_label_predictions(train, test)
    router = evaluate.sweep_router(test)
    choice = router.choose_by_target(predicted, 0.8)
    groups = evaluate.by_task(test, choice)
    assert groups["easy"]["router_share"]["cheap"] == 1.0 and groups["hard"]["router_share"]["strong"] == 1.0
    assert groups["easy"]["n"] == 60 and set(groups) == {"easy", "hard", "mixed"}
    # cross-validated, it beats the zero router (the single models' hull) on this table, where tasks matter
    aiq = selection.task_label_cv(table, 5, [0], 0.8)[0]
    zero = evaluate.report(table, router, np.zeros(table.quality.shape, dtype=np.float32), 0.8)["aiq_best_single"]
    assert aiq > zero + 0.02


def test_a_router_with_the_task_view_matches_the_task_label_router() -> None:
    table, vectors = _tasks_table()
    _, predicted = evaluate.cross_validate(table, vectors, None, 5, "task")
    router = evaluate.fit(table, vectors, None, "knn")
    task_view = evaluate.report(table, router, predicted, 0.8)["aiq_router"]
    assert task_view >= selection.task_label_cv(table, 5, [0], 0.8)[0] - 0.01
