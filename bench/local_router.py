"""The shipped `auto` router on the local fleet's held-out questions, with a paired significance test.

    .venv/bin/python bench/local_router.py

Loads ``builtin:auto`` and the committed outcome table
(data/routing/local_outcomes.jsonl), keeps the test split the router never saw,
and compares per question: auto against always-qwen2.5-0.5b and against
always-smollm2-135m. Accuracy differences on the same questions are tested with
the exact McNemar test (a two-sided binomial test on the questions where
exactly one of the two is right). The router is trained on PyTorch vectors
and served with int8 ones (``minilm-l6-int8``): it runs both ways, and
McNemar compares auto as served with auto on PyTorch vectors. Writes
bench/results/local_router.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402

from modelyard.pipeline import router_file  # noqa: E402
from modelyard.training import datasets, evaluate, features  # noqa: E402

OUTCOMES = ROOT / "data" / "routing" / "local_outcomes.jsonl"
CACHE = Path("~/.cache/modelyard/embeddings").expanduser()


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar on paired 0/1 outcomes: a right and b wrong vs the reverse."""
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_first_right": only_a, "only_second_right": only_b, "p_value": round(float(p), 4)}


def main() -> None:
    router, header = router_file.load(router_file.resolve("builtin:auto"))
    test = datasets.split(datasets.load([OUTCOMES]), "test", 0.25)
    assert tuple(test.models) == router.models, (test.models, router.models)
    target = float(header.get("target", 0.7))  # type: ignore[arg-type]
    rows = np.arange(len(test.prompts))
    columns = {name: test.quality[:, j] for j, name in enumerate(test.models)}
    arms: dict[str, Any] = {f"always {name}": {"accuracy": float(q.mean()), "cost": float(test.cost[:, j].mean())} for j, (name, q) in enumerate(columns.items())}
    served: dict[str, np.ndarray] = {}
    for runtime in ("torch", "onnx-int8"):
        predicted = evaluate.predict(router, test.prompts, features.embed(test.prompts, CACHE, runtime=runtime))
        choice = router.choose_by_target(predicted, target)
        served[runtime] = test.quality[rows, choice]
        arms[f"auto (target {target:g}, {runtime} vectors)"] = {
            "accuracy": float(served[runtime].mean()), "cost": float(test.cost[rows, choice].mean()),
            "share": {name: float((choice == j).mean()) for j, name in enumerate(test.models)},
        }
    auto = served["onnx-int8"]  # as the server routes
    tests = {f"auto vs always {name}": mcnemar(auto, q) for name, q in columns.items()}
    tests["auto (int8) vs auto (torch)"] = mcnemar(auto, served["torch"])
    out = [("", "accuracy", "cost per question ($)")]
    out += [(name, f"{arm['accuracy']:.3f}", f"{arm['cost']:.3g}") for name, arm in arms.items()]
    out += [("paired test", "p (exact McNemar)", "only auto right / only other right")]
    out += [(name, f"{t['p_value']:.3f}", f"{t['only_first_right']} / {t['only_second_right']}") for name, t in tests.items()]
    print(table(out))
    print(f"n = {len(test.prompts)} held-out questions")
    path = write_result("local_router", {"n": len(test.prompts), "target": target, "arms": arms, "mcnemar": tests, "machine": machine()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
