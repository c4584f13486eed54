"""How well the default `auto` alias's former code intent separates code prompts from the rest, by encoder depth.

    .venv/bin/python bench/intent_separation.py [--depths 6,4,3,2]

Until its route encoder was cut to 3 layers, the default fleet's `auto` sent
a prompt to its code intent's model (:data:`FORMER_CODE_INTENT`, as
config/defaults.py had it at 68adb20) when the prompt's MiniLM vector was
within the intent's cosine threshold of one of its example utterances. This
embeds those examples and the local fleet's 430 routing prompts (`router
collect`'s table; its mbpp and human_eval questions are the code prompts)
with the whole int8 MiniLM, and cut to its first N layers as a deployment
with ``layers: N`` does, and reports per depth:
the nearest-example similarity of code and of other prompts (quantiles), the
share of each that the configured threshold matches, and the thresholds that
would match every code prompt and no other. Prints a table, writes
bench/results/intent_separation.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402

from modelyard.backends.onnx_encoder import OnnxEncoder  # noqa: E402
from modelyard.config.schema import IntentConfig  # noqa: E402
from modelyard.fleet.artifacts import resolve  # noqa: E402
from modelyard.routing.semantic import examples_of, normalise  # noqa: E402
from modelyard.routing.text import routing_text  # noqa: E402
from modelyard.training import datasets  # noqa: E402

CODE_TASKS = ("mbpp", "human_eval")
QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)
# The default `auto`'s code intent until a code rule replaced it (config/defaults.py at 68adb20; bench/auto_policy.py).
FORMER_CODE_INTENT = IntentConfig(
    name="code",
    model="qwen2.5-0.5b",
    threshold=0.3,
    examples=(
        "Write a Python function that reverses a list",
        "Write a function to add two numbers",
        "Fix the bug in this code",
        "How do I parse JSON in JavaScript?",
        "Write a SQL query that counts rows per day",
        "Explain what this regular expression does",
        "Implement binary search in Rust",
        "Why does my program throw a null pointer exception?",
        "Write a bash script that renames files",
        "Refactor this class to use dependency injection",
    ),
)


def separation(encoder: OnnxEncoder, examples: list[str], texts: list[str], is_code: np.ndarray, threshold: float) -> dict[str, Any]:
    """Nearest-example similarities of code and other prompts, and what the threshold does with them."""
    example_vectors = normalise(encoder.encode(examples)[0])
    nearest = (normalise(encoder.encode(texts)[0]) @ example_vectors.T).max(axis=1)
    code, other = nearest[is_code], nearest[~is_code]
    return {
        "code_quantiles": [round(float(np.quantile(code, q)), 3) for q in QUANTILES],
        "other_quantiles": [round(float(np.quantile(other, q)), 3) for q in QUANTILES],
        "code_matched_share": float((code >= threshold).mean()),
        "other_matched_share": float((other >= threshold).mean()),
        "separating_thresholds": [round(float(other.max()), 3), round(float(code.min()), 3)] if other.max() < code.min() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="6,4,3,2", help="comma-separated layer counts, 1 to 6 (6: the packaged model)")
    args = parser.parse_args()
    depths = sorted({int(d) for d in args.depths.split(",")}, reverse=True)
    if not depths or depths[-1] < 1 or depths[0] > 6:
        parser.error("--depths are layer counts from 1 to 6")
    intent = FORMER_CODE_INTENT
    outcomes = datasets.load([ROOT / "data" / "routing" / "local_outcomes.jsonl"])
    texts = [routing_text(p) for p in outcomes.prompts]
    is_code = np.array([task in CODE_TASKS for task in outcomes.tasks])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve("builtin:all-minilm-l6-v2", Path(tmp) / "models")
        for depth in depths:
            encoder = OnnxEncoder(model_dir, Path(tmp) / "onnx", "int8", 1, layers=None if depth == 6 else depth)
            results[str(depth)] = separation(encoder, examples_of((intent,)), texts, is_code, intent.threshold)
    rows: list[tuple[str, ...]] = [("layers", "code: min p5 median p95 max", "other: min p5 median p95 max",
                                    f"matched at {intent.threshold:g}: code / other", "thresholds that separate")]
    for layers, r in results.items():
        band = "none" if r["separating_thresholds"] is None else f"{r['separating_thresholds'][0]:.3f} < t <= {r['separating_thresholds'][1]:.3f}"
        rows.append((layers, " ".join(f"{q:.2f}" for q in r["code_quantiles"]), " ".join(f"{q:.2f}" for q in r["other_quantiles"]),
                     f"{r['code_matched_share']:.1%} / {r['other_matched_share']:.1%}", band))
    print(f"intent {intent.name!r} -> {intent.model}, {len(intent.examples)} examples; {int(is_code.sum())} code prompts, {int((~is_code).sum())} others")
    print(table(rows))
    write_result("intent_separation", {"machine": machine(), "intent": intent.name, "threshold": intent.threshold, "code_tasks": list(CODE_TASKS),
                                       "n_code": int(is_code.sum()), "n_other": int((~is_code).sum()), "depths": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
