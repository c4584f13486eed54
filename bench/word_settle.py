"""How often the learned router's word view settles a pick without the embedding, and what that does to routing quality.

    .venv/bin/python bench/word_settle.py [--folds 5] [--sets local,routerbench,llmrouter] [--quantiles 0.99,0.95,0.9,0.8]

A learned alias with ``lexical_first`` (the default) computes the router's
word view of a prompt first and skips the embedding model when no embedding
view inside the router's band could change the pick
(:meth:`LearnedRouter.settle`). The band is measured when the router is
trained: by default the 5th to 95th percentile of (embedding view - word
view) on prompts each fold's router never saw (``router train
--band-quantile``). Inside the band a settled pick is exactly the full
router's; outside it, it may differ: a narrower band settles more picks and
risks more differing ones, which ``--quantiles`` measures.

Per data set, with nothing tuned on the prompts it reports:

1. Outer ``--folds``-fold cross-validation. Each fold's router and its band
   (an inner cross-validation on the training folds only, as
   ``modelyard router train`` does) are fitted without the test fold; on the
   test fold every point of the cost/quality sweep (26 targets, 301 lambdas)
   is routed twice: always embedding, and words first.
2. Per band quantile: the share of picks settled by words, the share of
   settled picks that differ from the full router's, and the quality, cost
   and AIQ of both.
3. For the local fleet, also the shipped ``builtin:auto`` as served (int8
   vectors at the file's depth and target) on the held-out 25% it was not
   trained on: the router alone, and the default fleet's ``auto`` alias,
   whose rules (the code rule among them) decide some prompts before the
   words, with no vector either.

Prints a table, writes bench/results/word_settle.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402

from modelyard.config.defaults import default_fleet  # noqa: E402
from modelyard.pipeline import router_file  # noqa: E402
from modelyard.routing.learned import LearnedRouter  # noqa: E402
from modelyard.routing.router import PromptFeatures, match_rule, settled_by_words  # noqa: E402
from modelyard.training import datasets, evaluate, features  # noqa: E402
from modelyard.training.metrics import aiq, outcome  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "routing"
LOCAL = ROOT / "data" / "routing" / "local_outcomes.jsonl"
SETS: dict[str, tuple[str, list[Path], str]] = {
    "local": ("local fleet (router collect)", [LOCAL], "onnx-int8"),
    "routerbench": ("RouterBench, three pooled", [DATA / f"routerbench_{n}_train.csv" for n in ("arc_challenge", "mbpp", "winograde")], "torch"),
    "llmrouter": ("LLMRouter 9 models", [DATA / "llmrouter_nim9_train.json"], "torch"),
    "routellm": ("RouteLLM MMLU", [DATA / "routellm_mmlu"], "torch"),
}
SWEEP: list[tuple[str, float]] = [("target", t) for t in evaluate.TARGETS] + [("lam", lam) for lam in evaluate.LAMBDAS]
REPORTED_TARGETS = (0.35, 0.5, 0.8, 0.9)  # 0.35: the shipped auto's; 0.9: `router train`'s default
GOALS = SWEEP + [("target", t) for t in REPORTED_TARGETS]  # the sweep (the AIQ's points), then the reported targets
Choices = npt.NDArray[np.int64]


def route_fold(router: LearnedRouter, prompts: list[str], vectors: npt.NDArray[np.float32],
               goals: list[tuple[str, float]]) -> tuple[Choices, Choices, npt.NDArray[np.bool_]]:
    """(full, words first, settled): the pick of every test prompt (rows) at every goal (columns), and which the words settled."""
    views = [router.word_view(p) for p in prompts]
    assert all(v is not None for v in views), "a router with a band has a word view"
    words = np.stack([v for v in views if v is not None])
    predicted = router.predict(vectors, words=words)
    full = np.empty((len(prompts), len(goals)), dtype=np.int64)
    first = np.empty_like(full)
    settled = np.zeros(full.shape, dtype=bool)
    for g, (kind, value) in enumerate(goals):
        full[:, g] = router.choose_by_target(predicted, value) if kind == "target" else router.choose_by_lambda(predicted, value)
        for i, seen in enumerate(words):
            choice = router.settle(seen, value, None) if kind == "target" else router.settle(seen, None, value)
            settled[i, g] = choice is not None
            first[i, g] = full[i, g] if choice is None else router.models.index(choice.model)
    return full, first, settled


def cross_validated(whole: datasets.OutcomeTable, vectors: npt.NDArray[np.float32], folds: int, goals: list[tuple[str, float]],
                    quantiles: list[float]) -> dict[str, Any]:
    """Per band quantile, the summary of routing every prompt by a router and band fitted without its fold."""
    shape = (len(whole.prompts), len(goals))
    full = {q: np.zeros(shape, dtype=np.int64) for q in quantiles}
    first = {q: np.zeros(shape, dtype=np.int64) for q in quantiles}
    settled = {q: np.zeros(shape, dtype=bool) for q in quantiles}
    for test, train in evaluate.fold_splits(len(whole.prompts), folds):
        part = whole.subset(train)
        gaps = evaluate.word_gaps(part, vectors[train], None, folds)  # the inner folds, as `router train` runs them
        assert gaps is not None, "the default learner has a word view"
        router = evaluate.fit(part, vectors[train])
        prompts = [whole.prompts[i] for i in test]
        for q in quantiles:
            banded = dataclasses.replace(router, word_band=evaluate.band_of(gaps, q))
            full[q][test], first[q][test], settled[q][test] = route_fold(banded, prompts, vectors[test], goals)
    return {f"{q:g}": summarise(whole, goals, full[q], first[q], settled[q]) for q in quantiles}


def summarise(table_: datasets.OutcomeTable, goals: list[tuple[str, float]], full: Choices, first: Choices, settled: npt.NDArray[np.bool_]) -> dict[str, Any]:
    q, c = table_.quality, table_.cost
    singles = [float(c[:, j].mean()) for j in range(q.shape[1])]
    lo, hi = min(singles), max(singles)
    points_full = [outcome(q, c, full[:, g]) for g in range(len(goals))]
    points_first = [outcome(q, c, first[:, g]) for g in range(len(goals))]
    sweep = len(SWEEP)
    sweep_full, sweep_first = points_full[:sweep], points_first[:sweep]
    targets = {f"{value:g}": point(points_full[g], points_first[g], full[:, g], first[:, g], settled[:, g])
               for g, (_, value) in enumerate(goals) if g >= sweep}
    in_sweep = settled[:, :sweep]
    return {
        "n": len(table_.prompts),
        "models": list(table_.models),
        "settled_share_over_sweep": float(in_sweep.mean()),
        "differing_share_of_settled_over_sweep": float((full != first)[:, :sweep][in_sweep].mean()) if in_sweep.any() else 0.0,
        "aiq_full": aiq([(cost, quality) for quality, cost in sweep_full], lo, hi),
        "aiq_words_first": aiq([(cost, quality) for quality, cost in sweep_first], lo, hi),
        "at_target": targets,
    }


def point(full: tuple[float, float], first: tuple[float, float], full_pick: Choices, first_pick: Choices, settled: npt.NDArray[np.bool_]) -> dict[str, float]:
    return {
        "settled_share": float(settled.mean()),
        "differing_picks": int((full_pick != first_pick).sum()),
        "quality_full": full[0], "quality_words_first": first[0],
        "cost_full": full[1], "cost_words_first": first[1],
    }


def shipped_auto() -> dict[str, Any]:
    """``builtin:auto`` as served, on the held-out 25% of the local table it was not trained on."""
    router, header = router_file.load(router_file.resolve("builtin:auto"))
    held = datasets.split(datasets.load([LOCAL]), "test", 0.25).for_models(router.models)
    layers = header.get("embedding_layers")  # the route encoder's depth the file was trained at (None: all six)
    vectors = features.embed(held.prompts, Path("~/.cache/modelyard/embeddings").expanduser(), runtime="onnx-int8",
                             layers=int(layers) if isinstance(layers, int) else None)
    target = float(str(header["target"]))
    full, first, settled = route_fold(router, held.prompts, vectors, [("target", target)])
    result = point(outcome(held.quality, held.cost, full[:, 0]), outcome(held.quality, held.cost, first[:, 0]), full[:, 0], first[:, 0], settled[:, 0])
    alias = default_fleet().alias("auto")
    assert alias is not None and alias.quality_target == target, "the default alias serves builtin:auto at its file's target"
    # As the pipeline asks: a rule first (no vector), then the words; what neither decides is embedded.
    ruled = [match_rule(alias.rules, PromptFeatures(text=p)) is not None for p in held.prompts]
    served = [not r and settled_by_words(alias, router, PromptFeatures(text=p, words=router.word_view(p))) is not None
              for p, r in zip(held.prompts, ruled, strict=True)]
    by_alias = {"intent_models": sorted({i.model for i in alias.intents}), "rule_share": sum(ruled) / len(ruled), "ruled": sum(ruled),
                "settled_share": sum(served) / len(served), "settled": sum(served),
                "embedded_share": 1 - (sum(ruled) + sum(served)) / len(served)}
    return {"n": len(held.prompts), "target": target, "word_band": np.asarray(router.word_band).tolist(), **result, "default_alias": by_alias}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sets", default="local,routerbench,llmrouter", help=f"comma-separated, of: {', '.join(SETS)}")
    parser.add_argument("--quantiles", default="0.99,0.95,0.9,0.8", help=f"band quantiles to compare ({evaluate.WORD_BAND_QUANTILE:g}: router train's default)")
    args = parser.parse_args()
    quantiles = [float(q) for q in args.quantiles.split(",")]
    results: dict[str, Any] = {}
    rows = [("data set", "band", "n", "settled (sweep)", "differ (of settled)", "AIQ full", "AIQ words first", "settled @0.35",
             "differ @0.35", "quality @0.35 full → words")]
    for key in args.sets.split(","):
        name, paths, runtime = SETS[key]
        whole = datasets.load(paths)
        vectors = features.embed(whole.prompts, Path("~/.cache/modelyard/embeddings").expanduser(), runtime=runtime)
        results[name] = {"embedding_runtime": runtime, "by_band_quantile": cross_validated(whole, vectors, args.folds, GOALS, quantiles)}
        for q, result in results[name]["by_band_quantile"].items():
            at = result["at_target"]["0.35"]
            rows.append((name, q, str(result["n"]), f"{result['settled_share_over_sweep']:.1%}", f"{result['differing_share_of_settled_over_sweep']:.2%}",
                         f"{result['aiq_full']:.4f}", f"{result['aiq_words_first']:.4f}", f"{at['settled_share']:.1%}", str(at["differing_picks"]),
                         f"{at['quality_full']:.4f} → {at['quality_words_first']:.4f}"))
            print(table(rows[-1:]), flush=True)
    shipped = shipped_auto() if "local" in args.sets.split(",") else None
    print()
    print(table(rows))
    if shipped:
        print(f"\nbuiltin:auto as served, held-out {shipped['n']} prompts at target {shipped['target']:g}: {shipped['settled_share']:.1%} settled by words, "
              f"{shipped['differing_picks']} picks differ; quality {shipped['quality_full']:.4f} → {shipped['quality_words_first']:.4f}")
        served = shipped["default_alias"]
        print(f"the default fleet's auto alias: {served['rule_share']:.1%} decided by a rule, {served['settled_share']:.1%} settled by words, "
              f"{served['embedded_share']:.1%} embedded (intents naming {', '.join(served['intent_models']) or 'none'})")
    path = write_result("word_settle", {"machine": machine(), "folds": args.folds, "default_band_quantile": evaluate.WORD_BAND_QUANTILE,
                                        "band_quantiles": quantiles, "sets": results, "builtin_auto_held_out": shipped})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
