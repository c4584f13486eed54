"""A shallower MiniLM for route embeddings: what the first N of its 6 layers cost per prompt, and what they do to the router.

    .venv/bin/python bench/encoder_depth.py [--depths 6,3] [--rounds 3] [--seeds 3]

The learned alias's new turns wait on one int8 MiniLM encode (issue 18's
"learned routing in under 3 ms"). The encoder's cost grows with its
transformer layers, so this measures a cut of the packaged
all-MiniLM-L6-v2 to its first N layers (the same weights, mean pooling and
normalisation as the full model), exported to int8 ONNX as a
sentence-transformers deployment with ``layers: N`` runs it
(``OnnxEncoder(..., layers=N)``):

1. Latency per prompt, one prompt per call as the router embeds, on one
   thread: a short chat turn (a new one per call, about 13 word pieces) and
   the local fleet's routing prompts (long multiple-choice and code
   questions). Depths alternate within each of ``--rounds`` rounds, in
   reverse order every other round; medians
   per round, the median of rounds and its range, and the ratio to 6 layers
   computed within each round.
2. Routing quality: per table (the local fleet's ``router collect`` table,
   RouterBench three pooled), the default learner's out-of-fold AIQ with the
   depth's own vectors for training and prediction, over ``--seeds`` fold
   seeds, and the paired difference to 6 layers per seed.

Nothing is shipped from this: the shipped router and the default alias's
intent thresholds were fitted on the 6-layer model's vectors. Prints tables,
writes bench/results/encoder_depth.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402

from modelyard.backends.onnx_encoder import OnnxEncoder  # noqa: E402
from modelyard.fleet.artifacts import resolve  # noqa: E402
from modelyard.routing.text import routing_text  # noqa: E402
from modelyard.training import datasets, evaluate  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "routing"
TABLES = {
    "local": [ROOT / "data" / "routing" / "local_outcomes.jsonl"],
    "routerbench": [DATA / f"routerbench_{n}_train.csv" for n in ("arc_challenge", "mbpp", "winograde")],
}


def latency(encoders: dict[int, OnnxEncoder], long_texts: list[str], rounds: int) -> dict[str, Any]:
    """Per prompt kind and depth: the median ms per call in each round, and each round's ratio to the deepest."""
    deepest = max(encoders)
    result: dict[str, Any] = {}
    for kind in ("short", "long"):
        per_round: dict[int, list[float]] = {d: [] for d in encoders}
        for r in range(rounds):
            order = list(encoders.items())
            for depth, encoder in order if r % 2 == 0 else reversed(order):  # no depth always runs first (or after the same one)
                texts = [f"Which gas do plants absorb, question {r}-{i} of {depth}?" for i in range(300)] if kind == "short" else long_texts
                times = []
                for text in texts:
                    started = time.perf_counter()
                    encoder.encode([text])
                    times.append((time.perf_counter() - started) * 1000)
                per_round[depth].append(statistics.median(times))
        result[kind] = {
            str(d): {"median_ms": round(statistics.median(v), 3), "range_ms": [round(min(v), 3), round(max(v), 3)],
                     "ratio_to_deepest_per_round": [round(x / y, 3) for x, y in zip(v, per_round[deepest], strict=True)]}
            for d, v in per_round.items()
        }
    return result


def quality(encoders: dict[int, OnnxEncoder], seeds: int) -> dict[str, Any]:
    """Per table and depth: the out-of-fold AIQ per fold seed, and the paired difference to the deepest per seed."""
    deepest = max(encoders)
    result: dict[str, Any] = {}
    for name, paths in TABLES.items():
        outcomes = datasets.load(paths)
        texts = [routing_text(p) for p in outcomes.prompts]
        aiqs: dict[int, list[float]] = {}
        for depth, encoder in encoders.items():
            vectors = encoder.encode(texts)[0]
            aiqs[depth] = []
            for seed in range(seeds):
                router, predicted = evaluate.cross_validate(outcomes, vectors, None, 5, seed=seed)
                aiqs[depth].append(round(float(evaluate.report(outcomes, router, predicted, 0.9)["aiq_router"]), 4))
        result[name] = {"n": len(texts), "models": len(outcomes.models), "depths": {
            str(d): {"aiq_per_seed": v, "aiq_median": statistics.median(v),
                     "paired_difference_to_deepest": [round(a - b, 4) for a, b in zip(v, aiqs[deepest], strict=True)]}
            for d, v in aiqs.items()}}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="6,3", help="comma-separated layer counts, 1 to 6 (6: the packaged model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="fold seeds of the 5-fold cross-validation")
    parser.add_argument("--parts", default="latency,quality", help="what to measure: latency, quality or both")
    args = parser.parse_args()
    depths = sorted({int(d) for d in args.depths.split(",")}, reverse=True)
    if not depths or depths[-1] < 1 or depths[0] > 6:
        parser.error("--depths are layer counts from 1 to 6")
    if not set(args.parts.split(",")) <= {"latency", "quality"}:
        parser.error("--parts takes latency, quality or both")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve("builtin:all-minilm-l6-v2", Path(tmp) / "models")
        graphs = Path(tmp) / "onnx"  # exported for this run, as a fresh deployment would
        encoders = {d: OnnxEncoder(model_dir, graphs, "int8", 1, layers=None if d == 6 else d) for d in depths}
        local = datasets.load(TABLES["local"])
        parts = set(args.parts.split(","))
        timing = latency(encoders, [routing_text(p) for p in local.prompts[:200]], args.rounds) if "latency" in parts else {}
        routing = quality(encoders, args.seeds) if "quality" in parts else {}
    rows: list[tuple[str, ...]] = [("prompts", "layers", "median ms per call", "range over rounds", "ratio to deepest, per round")]
    for kind, by_depth in timing.items():
        rows += [(kind, d, f"{v['median_ms']:.3f}", f"{v['range_ms'][0]:.3f}-{v['range_ms'][1]:.3f}", str(v["ratio_to_deepest_per_round"])) for d, v in by_depth.items()]
    print(table(rows))
    quality_rows: list[tuple[str, ...]] = [("table", "layers", "AIQ per fold seed", "paired difference to deepest")]
    for name, t in routing.items():
        quality_rows += [(f"{name} ({t['n']})", d, str(v["aiq_per_seed"]), str(v["paired_difference_to_deepest"])) for d, v in t["depths"].items()]
    print()
    print(table(quality_rows))
    write_result("encoder_depth", {"machine": machine(), "config": vars(args), "latency": timing, "routing": routing})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
