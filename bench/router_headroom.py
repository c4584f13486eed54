"""What the learned router does on the RouterBench tasks where the issue's cost goal is not met.

    python bench/router_headroom.py [--learner logistic+lexical] [--budget 0.3] [--folds 5]

For each RouterBench task (the issue's goal: the best single model's quality at
<= 30% of its cost) it reports, from cross-validated predictions: the best
model (GPT-4) and the cheap model that comes closest to it, the share of
prompts that only the best model answers ("needs best"), the empirical AUC of
the router's score (predicted best minus predicted cheap) on "needs best",
the best quality the router's own sweep reaches within the budget, and the
oracle's cost share. An earlier version turned the goal into a required AUC
through an equal-variance binormal model; that reduction (one operating point,
two models) did not hold on the real outcomes and was removed. Writes
bench/results/router_headroom.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402

from modelyard.training import datasets, evaluate, features  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "routing"
TASKS = {"ARC-Challenge": "arc_challenge", "MBPP": "mbpp", "Winogrande": "winograde"}
Vector = npt.NDArray[np.float64]


def auc(score: Vector, label: npt.NDArray[np.bool_]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    ranks = rankdata(score)
    positives, negatives = int(label.sum()), int((~label).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def closest_cheap(quality: Vector, cost: Vector, best: int) -> int:
    """The cheapest model within a point of the best quality among the models other than ``best``."""
    others = [j for j in range(quality.shape[1]) if j != best]
    top = max(quality[:, j].mean() for j in others)
    return min((j for j in others if quality[:, j].mean() >= top - 0.01), key=lambda j: cost[:, j].mean())


def analyse(name: str, path: Path, learner: str, folds: int, budget: float) -> dict[str, Any]:
    outcomes = datasets.load([path])
    embeddings = features.embed(outcomes.prompts, Path("~/.cache/modelyard/embeddings").expanduser())
    router, predicted = evaluate.cross_validate(outcomes, embeddings, None, folds, learner)
    quality, cost = outcomes.quality.astype(np.float64), outcomes.cost.astype(np.float64)
    best = int(np.argmax(quality.mean(axis=0)))
    cheap = closest_cheap(quality, cost, best)
    strong, weak = (quality[:, best], cost[:, best]), (quality[:, cheap], cost[:, cheap])
    needs = (strong[0] == 1) & (weak[0] == 0)
    report = evaluate.report(outcomes, router, predicted, 0.9)
    within = [p["quality"] for p in report["sweep"] if p["cost"] <= budget * report["best_single_cost"]]
    return {
        "n": len(outcomes.prompts),
        "best_model": outcomes.models[best],
        "best_quality": float(strong[0].mean()),
        "cheap_model": outcomes.models[cheap],
        "cheap_quality": float(weak[0].mean()),
        "cheap_cost_share": float(weak[1].mean() / strong[1].mean()),
        "needs_best_share": float(needs.mean()),
        "router_auc": auc((predicted[:, best] - predicted[:, cheap]).astype(np.float64), needs),
        "router_quality_within_budget": max(within, default=None),
        "oracle_cost_share": report["oracle_cost"] / report["best_single_cost"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learner", choices=evaluate.LEARNERS, default="logistic+lexical")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="share of the best model's cost (the issue's goal: 0.3)")
    args = parser.parse_args()
    paths = {name: DATA / f"routerbench_{stem}_train.csv" for name, stem in TASKS.items()}
    results = {name: analyse(name, path, args.learner, args.folds, args.budget) for name, path in paths.items() if path.exists()}
    header = ("task", "n", "best q", "closest cheap (q, cost share)", "needs best", "router AUC", f"router q at {args.budget:.0%}")
    rows = [header]
    for name, r in results.items():
        within = "-" if r["router_quality_within_budget"] is None else f"{r['router_quality_within_budget']:.3f}"
        rows.append((name, str(r["n"]), f"{r['best_quality']:.3f}", f"{r['cheap_model']} ({r['cheap_quality']:.3f}, {r['cheap_cost_share']:.0%})",
                     f"{r['needs_best_share']:.1%}", f"{r['router_auc']:.2f}", within))
    print(table(rows))
    path = write_result("router_headroom", {"machine": machine(), "learner": args.learner, "folds": args.folds, "budget": args.budget, "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
