"""Cross-validated cost/quality of the learned router on every public outcome table and the local fleet's own.

    python bench/router_curves.py [--learner knn+ridge] [--folds 5]

Prints one row per data set (router vs best single model vs oracle), writes
bench/results/router_cv.json and the cost/quality curves to docs/routing_curves.png.
Each prompt is predicted by a router that never saw it (out-of-fold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402

from modelyard.training import datasets, evaluate, features  # noqa: E402
from modelyard.training.plot import plot_reports  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "routing"
LOCAL = ROOT / "data" / "routing" / "local_outcomes.jsonl"
SETS: dict[str, list[Path]] = {
    "RouterBench ARC-Challenge": [DATA / "routerbench_arc_challenge_train.csv"],
    "RouterBench MBPP": [DATA / "routerbench_mbpp_train.csv"],
    "RouterBench Winogrande": [DATA / "routerbench_winograde_train.csv"],
    "RouterBench, three pooled": [DATA / f"routerbench_{n}_train.csv" for n in ("arc_challenge", "mbpp", "winograde")],
    "LLMRouter 9 models": [DATA / "llmrouter_nim9_train.json"],
    "RouteLLM MMLU": [DATA / "routellm_mmlu"],
    "local fleet (router collect)": [LOCAL],
}


def run(name: str, paths: list[Path], learner: str, folds: int, target: float) -> dict[str, Any]:
    table_ = datasets.load(paths)
    embeddings = features.embed(table_.prompts, Path("~/.cache/modelyard/embeddings").expanduser())
    router, predicted = evaluate.cross_validate(table_, embeddings, None, folds, learner)
    return evaluate.report(table_, router, predicted, target)


def row(name: str, r: dict[str, Any]) -> tuple[str, ...]:
    ratio = r.get("cost_ratio_at_best_single_quality")
    return (
        name, str(r["n"]), f"{r['router_quality']:.4f}", f"{r['router_cost'] / r['best_single_cost']:.1%}",
        f"{r['best_single_quality']:.4f}", "never" if ratio is None else f"{ratio:.1%}",
        f"{r['aiq_router']:.4f}", f"{r['aiq_best_single']:.4f}", f"{r['oracle_quality']:.4f}", f"{r['apgr']:.3f}" if "apgr" in r else "-",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learner", choices=evaluate.LEARNERS, default=evaluate.DEFAULT_LEARNER)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "routing_curves.png"))
    args = parser.parse_args()
    reports = {name: run(name, paths, args.learner, args.folds, args.target) for name, paths in SETS.items() if all(p.exists() for p in paths)}
    header = ("data", "n", "router q", "router cost/best", "best single q", "reaches best at", "AIQ router", "AIQ models", "oracle q", "APGR")
    print(table([header] + [row(n, r) for n, r in reports.items()]))
    plot_reports(list(reports.items()), Path(args.plot))
    path = write_result("router_cv", {"machine": machine(), "learner": args.learner, "folds": args.folds, "target": args.target,
                                       "results": {n: {k: v for k, v in r.items() if k != "sweep"} for n, r in reports.items()}})
    print(f"wrote {path} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
