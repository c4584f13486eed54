"""Cost/quality of the learned router on every public outcome table and the local fleet's own, with the learner chosen on a part never reported.

    python bench/router_curves.py [--folds 5] [--seeds 5] [--draws 40] [--learners a,b,...]

Per data set:

1. A fixed 30% of the prompts (salted prompt hash) chooses the learner: each
   candidate is cross-validated there and the largest AIQ wins. That part is
   never reported.
2. The chosen learner is cross-validated on the other 70% under ``--seeds``
   fold seeds (each prompt predicted by a router that never saw it); every
   figure is reported as mean, spread and range over the seeds.
3. An uninformative router (each model's training base rate plus noise with
   the real router's per-model spread) goes through the same sweep ``--draws``
   times; an AIQ gain over the zero router (the single models' hull) is
   claimed only when every seed's gain lies above that band's 97.5th percentile.

Prints one row per data set, writes bench/results/router_cv.json and the
cost/quality curves (seed 0) to docs/routing_curves.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, commit, machine, table, write_result  # noqa: E402

from modelyard.training import datasets, evaluate, features, selection  # noqa: E402
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
FIGURES = ("router_quality", "router_cost_share", "aiq_router", "aiq_gain", "apgr")


def run(paths: list[Path], learners: list[str], folds: int, seeds: int, draws: int, target: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the data set's results for the JSON, the seed-0 report for the plot)."""
    whole = datasets.load(paths)
    embeddings = features.embed(whole.prompts, Path("~/.cache/modelyard/embeddings").expanduser())
    split = selection.selection_split(whole.prompts)
    chosen, scores = selection.choose_learner(whole.subset(split.select), embeddings[split.select], learners, folds, target)
    reported, vectors = whole.subset(split.report), embeddings[split.report]
    reports = selection.repeated_cv(reported, vectors, chosen, folds, range(seeds), target)
    spread = np.mean([r["prediction_spread"] for r in reports], axis=0)
    band = selection.uninformative_band(reported, spread, folds, target, draws)
    per_seed = [_figures(r) for r in reports]
    gains = [f["aiq_gain"] for f in per_seed]
    task_label = selection.task_label_cv(reported, folds, range(seeds), target) if reported.tasks else []
    first = reports[0]
    result = {
        "selection": {"n": len(split.select), "aiq_by_learner": scores, "chosen": chosen},
        "n": len(split.report),
        "best_single_model": first["best_single_model"],
        "best_single_quality": first["best_single_quality"],
        "aiq_zero_router": first["aiq_best_single"],
        "oracle_quality": first["oracle_quality"],
        "spread": {name: selection.spread_of([f[name] for f in per_seed if f.get(name) is not None])
                   for name in FIGURES if any(f.get(name) is not None for f in per_seed)},
        "reaches_best_single": {"seeds": sum(f["reach_share"] is not None for f in per_seed),
                                "cost_share": [f["reach_share"] for f in per_seed]},
        "uninformative_band": band,
        "gain_claimed": selection.gain_claim(gains, band),
        # A router told each prompt's true task (data set, subject or cluster), cross-validated under the same seeds.
        "aiq_task_label": selection.spread_of(task_label) if task_label else None,
        "aiq_task_label_per_seed": task_label,  # paired with per_seed[i]["aiq_router"] (the same folds)
        "aiq_router_minus_task_label": selection.spread_of([f["aiq_router"] - t for f, t in zip(per_seed, task_label, strict=True)]) if task_label else None,
        "tasks": len(set(reported.tasks)),
        "per_seed": [{k: v for k, v in r.items() if k != "sweep"} for r in reports],
    }
    return result, first


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    reach = report.get("cost_ratio_at_best_single_quality")
    return {
        "router_quality": report["router_quality"],
        "router_cost_share": report["router_cost"] / report["best_single_cost"],
        "aiq_router": report["aiq_router"],
        "aiq_gain": report["aiq_router"] - report["aiq_best_single"],
        "apgr": report.get("apgr"),
        "reach_share": reach,
    }


def row(name: str, r: dict[str, Any]) -> tuple[str, ...]:
    s, band = r["spread"], r["uninformative_band"]
    reach = [x for x in r["reaches_best_single"]["cost_share"] if x is not None]
    seeds = len(r["per_seed"])
    return (
        name, f"{r['n']} (+{r['selection']['n']})", r["selection"]["chosen"],
        f"{s['router_quality']['mean']:.3f} ±{s['router_quality']['std']:.3f}", f"{s['router_cost_share']['mean']:.1%}",
        f"{r['best_single_quality']:.3f}", f"{len(reach)}/{seeds}" + (f" at {np.median(reach):.1%}" if reach else ""),
        f"{s['aiq_router']['mean']:.4f} ±{s['aiq_router']['std']:.4f}", f"{r['aiq_zero_router']:.4f}",
        f"{s['aiq_gain']['mean']:+.4f} [{s['aiq_gain']['min']:+.4f}]", f"{band['gain_high']:+.4f}",
        "yes" if r["gain_claimed"] else "no", f"{s['apgr']['mean']:.3f} ±{s['apgr']['std']:.3f}" if "apgr" in s else "-",
        f"{r['aiq_task_label']['mean']:.4f} ({r['tasks']})" if r.get("aiq_task_label") else "-",
    )


def _earlier_results() -> dict[str, Any]:
    """The data sets of the last full run, which a ``--sets`` run keeps (each row carries the commit that measured it)."""
    path = ROOT / "bench" / "results" / "router_cv.json"
    if not path.exists():
        return {}
    earlier: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")).get("results", {})
    return earlier


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", default=",".join(evaluate.LEARNERS), help="candidate learners (comma-separated)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5, help="fold seeds the reported part is cross-validated under")
    parser.add_argument("--draws", type=int, default=40, help="uninformative routers drawn for the band")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--sets", default="", help="only these data sets (comma-separated substrings of their names)")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "routing_curves.png"))
    args = parser.parse_args()
    learners = [name for name in args.learners.split(",") if name]
    unknown = [name for name in learners if name not in evaluate.LEARNERS]
    if unknown:
        parser.error(f"unknown learners {unknown} (known: {', '.join(evaluate.LEARNERS)})")
    wanted = [w for w in args.sets.split(",") if w]
    results: dict[str, dict[str, Any]] = {}
    panels = []
    for name, paths in SETS.items():
        if not all(p.exists() for p in paths) or (wanted and not any(w.lower() in name.lower() for w in wanted)):
            continue
        results[name], first = run(paths, learners, args.folds, args.seeds, args.draws, args.target)
        panels.append((name, first))
        print(f"{name}: chose {results[name]['selection']['chosen']}", flush=True)
    header = ("data", "n reported (+selection)", "learner", f"router q (target {args.target:g})", "cost/best", "best single q",
              "seeds reaching best q", "AIQ router", "AIQ zero", "gain mean [min]", "uninformative 97.5%", "claimed", "APGR", "AIQ task-label (tasks)")
    print(table([header] + [row(n, r) for n, r in results.items()]))
    if not wanted:
        plot_reports(panels, Path(args.plot))
    settings = {"learners": learners, "folds": args.folds, "seeds": args.seeds, "draws": args.draws, "target": args.target}
    for r in results.values():
        r["settings"] = settings  # kept per data set: a --sets run replaces only its own rows
        r["commit"] = commit()
    kept = _earlier_results() if wanted else {}
    path = write_result("router_cv", {"machine": machine(), **settings, "selection_fraction": selection.SELECTION_FRACTION,
                                       "results": {**kept, **results}})
    print(f"wrote {path}" + ("" if wanted else f" and {args.plot}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
