"""Evaluate a router on an outcome table: the sweep, the baselines, and the published metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.routing.learned import LearnedRouter
from modelyard.routing.task_prior import TaskPrior
from modelyard.routing.text import routing_text
from modelyard.training.datasets import OutcomeTable
from modelyard.training.lexical_fit import fit_lexical
from modelyard.training.metrics import aiq, apgr, cpt, oracle_choice, outcome, pgr_curve

# Willingness to pay, from "quality only" (0) to "cost only": at 1e3 every prompt goes to the
# cheapest model, so the sweep spans the whole cost range the AIQ is taken over.
LAMBDAS = [0.0] + list(np.geomspace(1e-4, 1e3, 300))
TARGETS = list(np.linspace(0.5, 1.0, 26))


def report(table: OutcomeTable, router: LearnedRouter, predicted: npt.NDArray[np.float32], target: float) -> dict[str, Any]:
    q, c = table.quality, table.cost
    n, m = q.shape
    singles = [(table.models[j], float(q[:, j].mean()), float(c[:, j].mean())) for j in range(m)]
    best = max(singles, key=lambda s: (s[1], -s[2]))
    cheapest = min(singles, key=lambda s: s[2])
    choice = router.choose_by_target(predicted, target)
    router_q, router_c = outcome(q, c, choice)
    sweep = [outcome(q, c, router.choose_by_lambda(predicted, lam)) for lam in LAMBDAS]
    sweep += [outcome(q, c, router.choose_by_target(predicted, t)) for t in TARGETS]
    reaching = [cost for quality, cost in sweep if quality >= best[1] - 1e-12]
    oracle_q, oracle_c = outcome(q, c, oracle_choice(q, c))
    lo, hi = min(s[2] for s in singles), max(s[2] for s in singles)
    result: dict[str, Any] = {
        "n": n,
        "models": list(table.models),
        "router_quality": router_q,
        "router_cost": router_c,
        "router_target": target,
        "router_share": {name: float((choice == j).mean()) for j, name in enumerate(table.models)},
        "best_single_model": best[0],
        "best_single_quality": best[1],
        "best_single_cost": best[2],
        "router_cost_at_best_single_quality": min(reaching) if reaching else None,
        "oracle_quality": oracle_q,
        "oracle_cost": oracle_c,
        "aiq_router": aiq([(cost, quality) for quality, cost in sweep], lo, hi),
        # RouterBench's baseline: the hull of the single models' points (the "zero router"
        # that mixes models at random), over the same cost range as the router.
        "aiq_best_single": aiq([(cc, qq) for _, qq, cc in singles], lo, hi),
        "baselines": {
            "random": {"quality": float(q.mean()), "cost": float(c.mean())},
            "always_cheapest": {"model": cheapest[0], "quality": cheapest[1], "cost": cheapest[2]},
            "always_strongest": {"model": best[0], "quality": best[1], "cost": best[2]},
            "oracle": {"quality": oracle_q, "cost": oracle_c},
            "single_models": {name: {"quality": qq, "cost": cc} for name, qq, cc in singles},
        },
        "sweep": [{"quality": quality, "cost": cost} for quality, cost in sweep],
    }
    if table.tasks:
        result["by_task"] = by_task(table, choice)
    if m == 2:
        weak, strong = (0, 1) if singles[0][2] <= singles[1][2] else (1, 0)
        points = pgr_curve((predicted[:, strong] - predicted[:, weak]).astype(np.float64), q[:, weak], q[:, strong])
        result.update(apgr=apgr(points), cpt50=cpt(points, 0.5), cpt80=cpt(points, 0.8))
    if result["router_cost_at_best_single_quality"] is not None:
        result["cost_ratio_at_best_single_quality"] = result["router_cost_at_best_single_quality"] / best[2]
    return result


SHARE_TARGETS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)


def target_shares(table: OutcomeTable, router: LearnedRouter, predicted: npt.NDArray[np.float32], targets: tuple[float, ...] = SHARE_TARGETS) -> list[dict[str, Any]]:
    """Per quality target: the share of the table's prompts the router sends to each model, and the recorded
    quality and cost of those choices (what ``modelyard plan`` turns into replicas and dollars)."""
    rows = []
    for target in sorted(set(targets)):
        choice = router.choose_by_target(predicted, target)
        quality, cost = outcome(table.quality, table.cost, choice)
        shares = {name: round(float((choice == j).mean()), 4) for j, name in enumerate(table.models)}
        rows.append({"target": round(float(target), 4), "shares": shares, "quality": round(quality, 4), "cost_per_request": cost})
    return rows


LEARNERS = (
    "knn+logistic+lexical", "knn+logistic", "knn+ridge", "knn", "ridge", "logistic", "logistic+lexical",
    # With the task view (needs a table with task labels): blended half and half, or alone ("task").
    "knn+logistic+lexical+task", "knn+logistic+task", "logistic+lexical+task", "ridge+task", "task",
)
DEFAULT_LEARNER = "knn+logistic+lexical"  # chosen in cross-validation on the public tables (docs/routing.md)
NEIGHBOUR_SHARE = 0.02  # k = 2% of the training prompts (at least 16) when not given
PROBE_ALPHA = 10.0
TASK_WEIGHT = 0.5


def neighbours(n: int, k: int | None) -> int:
    """The k used for ``n`` training prompts: ``k`` itself, or 2% of them (at least 16)."""
    return k if k else max(16, round(NEIGHBOUR_SHARE * n))


def fit(table: OutcomeTable, embeddings: npt.NDArray[np.float32], k: int | None = None, learner: str = DEFAULT_LEARNER) -> LearnedRouter:
    """A router of one of :data:`LEARNERS`: a neighbour vote, a probe on the embedding, the word view,
    the task view, or their blend."""
    if learner not in LEARNERS:
        raise ValueError(f"unknown learner {learner!r} (known: {', '.join(LEARNERS)})")
    parts = set(learner.split("+"))
    k = neighbours(len(table.prompts), k)
    quality = table.quality.astype(np.float32)
    task_prior = None
    if "task" in parts:
        if not table.tasks:
            raise ValueError(f"learner {learner!r} needs task labels, and {table.source} has none")
        task_prior = TaskPrior.fit(embeddings, quality, table.tasks)
    lexical = fit_lexical(texts_of(table.prompts), quality) if "lexical" in parts else None
    probe = "logistic" if "logistic" in parts else "ridge" if "ridge" in parts else ""
    linear = {"ridge": LearnedRouter.fit_linear, "logistic": LearnedRouter.fit_logistic}[probe](embeddings, quality, PROBE_ALPHA) if probe else None
    return LearnedRouter(
        models=table.models, costs=table.cost.mean(axis=0).astype(np.float32), embeddings=embeddings, quality=quality, k=k,
        linear=linear, link="logistic" if probe == "logistic" else "identity", use_knn="knn" in parts or not probe, lexical=lexical,
        task_prior=task_prior, task_weight=1.0 if parts == {"task"} else TASK_WEIGHT,
    )


def sweep_router(table: OutcomeTable) -> LearnedRouter:
    """A router holding only the table's per-model costs: enough to send any predictions through the sweep
    (:func:`report`) without fitting anything."""
    m = len(table.models)
    return LearnedRouter(models=table.models, costs=table.cost.mean(axis=0).astype(np.float32),
                         embeddings=np.zeros((1, 1), dtype=np.float32), quality=np.zeros((1, m), dtype=np.float32))


def task_label_predictions(train: OutcomeTable, test: OutcomeTable) -> npt.NDArray[np.float32]:
    """The task-label router's predictions: each test prompt gets its (true) task's mean outcome per model on ``train``.

    A task the training part never saw gets the training part's overall means.
    """
    if not train.tasks or not test.tasks:
        raise ValueError("the task-label router needs task labels")
    overall = train.quality.mean(axis=0)
    labels = np.array(train.tasks)
    means = {t: train.quality[labels == t].mean(axis=0) for t in set(train.tasks)}
    return np.stack([means.get(t, overall) for t in test.tasks]).astype(np.float32)


def by_task(table: OutcomeTable, choice: npt.NDArray[np.int64]) -> dict[str, dict[str, Any]]:
    """Per task: prompts, each model's mean quality, and the routing's quality, cost and share per model."""
    if not table.tasks:
        return {}
    labels = np.array(table.tasks)
    out: dict[str, dict[str, Any]] = {}
    for task in sorted(set(table.tasks)):
        rows = np.flatnonzero(labels == task)
        picked = choice[rows]
        out[task] = {
            "n": int(len(rows)),
            "single_models": {name: float(table.quality[rows, j].mean()) for j, name in enumerate(table.models)},
            "router_quality": float(table.quality[rows, picked].mean()),
            "router_cost": float(table.cost[rows, picked].mean()),
            "router_share": {name: float((picked == j).mean()) for j, name in enumerate(table.models)},
        }
    return out


def texts_of(prompts: list[str]) -> list[str]:
    """What the router reads of each prompt (the same function the server calls)."""
    return [routing_text(p) for p in prompts]


def predict(router: LearnedRouter, prompts: list[str], embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The router's predictions for a table's prompts (the word view too, when it has one)."""
    return router.predict(embeddings, texts_of(prompts) if router.lexical is not None else None)


def fold_splits(n: int, folds: int, seed: int = 0) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """(test rows, training rows) of each of ``folds`` folds over ``n`` prompts, shuffled by ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    for fold in range(folds):
        test = order[fold::folds]
        yield test, np.setdiff1d(order, test)


WORD_BAND_QUANTILE = 0.95  # the 5th to the 95th percentile of the out-of-fold gap: bench/word_settle.py measured 0.99 to 0.8


def word_gaps(table: OutcomeTable, embeddings: npt.NDArray[np.float32], k: int | None, folds: int, learner: str = DEFAULT_LEARNER,
              seed: int = 0) -> npt.NDArray[np.float32] | None:
    """(n, m): each prompt's embedding view minus its word view, predicted by a router fitted without its fold;
    None for a learner without a word view, or with the task view, or too few prompts for ``folds``."""
    parts = set(learner.split("+"))
    folds = min(folds, len(table.prompts))
    if "lexical" not in parts or "task" in parts or folds < 2:
        return None
    gaps = np.zeros(table.quality.shape, dtype=np.float32)
    for test, train in fold_splits(len(table.prompts), folds, seed):
        router = fit(table.subset(train), embeddings[train], k, learner)
        assert router.lexical is not None
        gaps[test] = router.embedded_view(embeddings[test]) - router.lexical.predict(texts_of([table.prompts[i] for i in test]))
    return gaps


def band_of(gaps: npt.NDArray[np.float32], quantile: float = WORD_BAND_QUANTILE) -> npt.NDArray[np.float32]:
    """(2, m): the low (1 - ``quantile``) and high ``quantile`` of the gaps, per model."""
    return np.stack([np.quantile(gaps, 1.0 - quantile, axis=0), np.quantile(gaps, quantile, axis=0)]).astype(np.float32)


def word_band(table: OutcomeTable, embeddings: npt.NDArray[np.float32], k: int | None, folds: int, learner: str = DEFAULT_LEARNER,
              quantile: float = WORD_BAND_QUANTILE, seed: int = 0) -> npt.NDArray[np.float32] | None:
    """(2, m): how far the embedding view strays from the word view on prompts the router never saw (:func:`word_gaps`),
    per model, as the low and high ``quantile`` of the gap; None where :func:`word_gaps` is.

    :meth:`LearnedRouter.settle` skips the embedding when no gap inside the band changes the pick.
    """
    gaps = word_gaps(table, embeddings, k, folds, learner, seed)
    return None if gaps is None else band_of(gaps, quantile)


def words_first(router: LearnedRouter, prompts: list[str], predicted: npt.NDArray[np.float32], target: float) -> dict[str, Any] | None:
    """At ``target``: the share of ``prompts`` whose pick the router's word view settles (no embedding run when serving
    with ``lexical_first``), and how many settled picks differ from the full router's; None for a router without a band."""
    if not router.settles_by_words:
        return None
    full = router.choose_by_target(predicted, target)
    settled = differing = 0
    for prompt, pick in zip(prompts, full, strict=True):
        words = router.word_view(prompt)
        choice = None if words is None else router.settle(words, target)
        if choice is None:
            continue
        settled += 1
        differing += router.models.index(choice.model) != int(pick)
    return {"settled_share": settled / max(1, len(prompts)), "settled": settled, "differing_picks": differing}


def cross_validate(table: OutcomeTable, embeddings: npt.NDArray[np.float32], k: int | None, folds: int, learner: str = DEFAULT_LEARNER, seed: int = 0) -> tuple[LearnedRouter, npt.NDArray[np.float32]]:
    """Out-of-fold predictions for every prompt (each predicted by a router that never saw it)."""
    predicted = np.zeros(table.quality.shape, dtype=np.float32)
    for test, train in fold_splits(len(table.prompts), folds, seed):
        router = fit(table.subset(train), embeddings[train], k, learner)
        predicted[test] = predict(router, [table.prompts[i] for i in test], embeddings[test])
    return fit(table, embeddings, k, learner), predicted
