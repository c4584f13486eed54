"""MiniLM on three runtimes: per-prompt latency, agreement with PyTorch, and what each does to the learned router.

    .venv/bin/python bench/embed_runtimes.py [--prompts 300] [--repeats 3] [--folds 5]

Embeds the routing prompts of the public RouterBench slice
(../shared/data/routing/routerbench_*.csv), one prompt per call as the
router does, with sentence-transformers on PyTorch (what modelyard ran),
ONNX Runtime fp32 and ONNX Runtime int8 (bench path:
modelyard.backends.onnx_encoder), all on one thread with
OMP_WAIT_POLICY=PASSIVE, alternating the runtimes in each repeat. Reports the
median and p90 per call and the spread of medians over repeats, the cosine
between each runtime's vectors and PyTorch's, and the router's quality: a
k-fold cross-validation in which every router is trained on PyTorch vectors
(as shipped routers are) and each held-out fold is predicted from the
runtime's vectors (as the server would), with AIQ and APGR per runtime and,
for scale, the spread of PyTorch's own AIQ over five fold seeds. Writes
bench/results/embed_runtimes.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, percentile, table, write_result  # noqa: E402

from modelyard.backends.onnx_encoder import OnnxEncoder  # noqa: E402
from modelyard.fleet.artifacts import resolve  # noqa: E402
from modelyard.training import datasets, evaluate  # noqa: E402

DATA = sorted((ROOT.parent / "shared" / "data" / "routing").glob("routerbench_*.csv"))
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8")


def encoders(model_dir: Path, cache: Path) -> dict[str, Callable[[list[str]], np.ndarray]]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    fp32, int8 = OnnxEncoder(model_dir, cache, "fp32"), OnnxEncoder(model_dir, cache, "int8")
    return {
        "torch": lambda texts: st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False),
        "onnx-fp32": lambda texts: fp32.encode(texts)[0],
        "onnx-int8": lambda texts: int8.encode(texts)[0],
    }


def latency(encode: dict[str, Callable[[list[str]], np.ndarray]], texts: list[str], repeats: int) -> dict[str, Any]:
    per_call: dict[str, list[float]] = {name: [] for name in RUNTIMES}
    medians: dict[str, list[float]] = {name: [] for name in RUNTIMES}
    for repeat in range(repeats):
        order = RUNTIMES if repeat % 2 == 0 else RUNTIMES[::-1]
        for name in order:
            encode[name](texts[:5])  # warm
            times = []
            for text in texts:
                started = time.perf_counter()
                encode[name]([text])
                times.append((time.perf_counter() - started) * 1000)
            per_call[name] += times
            medians[name].append(statistics.median(times))
    return {
        name: {"p50_ms": round(statistics.median(per_call[name]), 3), "p90_ms": round(percentile(per_call[name], 90) or 0.0, 3),
               "median_range_ms": [round(min(medians[name]), 3), round(max(medians[name]), 3)], "calls": len(per_call[name])}
        for name in RUNTIMES
    }


def routed(table_: datasets.OutcomeTable, train_vectors: np.ndarray, test_vectors: np.ndarray, folds: int, seed: int) -> dict[str, Any]:
    """Cross-validation: fit on ``train_vectors``, predict each held-out fold from ``test_vectors``."""
    order = np.random.default_rng(seed).permutation(len(table_.prompts))
    predicted = np.zeros(table_.quality.shape, dtype=np.float32)
    router = None
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        router = evaluate.fit(table_.subset(train), train_vectors[train])
        predicted[test] = evaluate.predict(router, [table_.prompts[i] for i in test], test_vectors[test])
    assert router is not None
    report = evaluate.report(table_, router, predicted, 0.9)
    return {key: report[key] for key in ("router_quality", "router_cost", "aiq_router", "apgr") if key in report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=300, help="prompts per runtime and repeat in the latency test (default 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve("builtin:all-minilm-l6-v2", Path(tmp) / "models")
        encode = encoders(model_dir, Path(tmp) / "onnx")
        outcomes = datasets.load(DATA)
        texts = evaluate.texts_of(outcomes.prompts)
        print(f"embedding {len(texts)} routing prompts with each runtime ...", flush=True)
        vectors = {name: np.vstack([encode[name](texts[i : i + 64]) for i in range(0, len(texts), 64)]).astype(np.float32) for name in RUNTIMES}
        speed = latency(encode, texts[: args.prompts], args.repeats)
    agreement = {name: {"cosine_min": round(float((vectors[name] * vectors["torch"]).sum(1).min()), 5),
                        "cosine_median": round(float(np.median((vectors[name] * vectors["torch"]).sum(1))), 5)} for name in RUNTIMES}
    quality = {name: routed(outcomes, vectors["torch"], vectors[name], args.folds, seed=0) for name in RUNTIMES}
    seeds = [routed(outcomes, vectors["torch"], vectors["torch"], args.folds, seed=s)["aiq_router"] for s in range(5)]
    noise = {"torch_aiq_over_fold_seeds": [round(a, 4) for a in seeds], "range": round(max(seeds) - min(seeds), 4)}
    rows = [("runtime", "p50 ms", "p90 ms", "medians over repeats", "cos min", "router quality", "AIQ", "APGR")]
    for name in RUNTIMES:
        q = quality[name]
        rows.append((name, f"{speed[name]['p50_ms']:.2f}", f"{speed[name]['p90_ms']:.2f}", "-".join(f"{v:.2f}" for v in speed[name]["median_range_ms"]),
                     f"{agreement[name]['cosine_min']:.4f}", f"{q['router_quality']:.4f}", f"{q['aiq_router']:.4f}", f"{q.get('apgr', float('nan')):.4f}"))
    print(table(rows))
    print(f"PyTorch's own AIQ over five fold seeds: {noise['torch_aiq_over_fold_seeds']} (range {noise['range']})")
    summary = {
        "data": [p.name for p in DATA], "n": len(texts), "latency": speed, "agreement": agreement, "router": quality, "noise": noise,
        "int8_speedup_vs_torch": round(speed["torch"]["p50_ms"] / speed["onnx-int8"]["p50_ms"], 2),
        "fp32_speedup_vs_torch": round(speed["torch"]["p50_ms"] / speed["onnx-fp32"]["p50_ms"], 2),
        "int8_aiq_delta": round(quality["onnx-int8"]["aiq_router"] - quality["torch"]["aiq_router"], 4),
        "machine": machine(),
    }
    print(f"wrote {write_result('embed_runtimes', summary)}")


if __name__ == "__main__":
    main()
