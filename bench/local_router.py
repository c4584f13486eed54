"""Routing on the local fleet, held out: the learned `auto`, the task-label router, cascades and route-then-escalate.

    .venv/bin/python bench/local_router.py [--train] [--outcomes data/routing/local_outcomes.jsonl]

The outcome table is what ``modelyard router collect`` recorded (scores,
costs, tokens, mean log-probabilities of both local models on checkable
tasks). A fixed 25% of its questions (by prompt hash) is held out; nothing
below is tuned on them.

``--train`` first chooses the learner and the quality target on the training
part only (5-fold cross-validation: of the learners with a word view, which
words first needs, the one with the largest AIQ; then the
cheapest target, 0.1 to 1, whose cross-validated accuracy is at least
always-qwen's), then writes the shipped
router with ``modelyard router train`` (the command is printed) and records
the choice.

On the held-out part: accuracy and cost of always-smollm2, always-qwen, the
oracle, the task-label router (each question's true task, means from the
training part) and `auto` as served (int8 vectors); exact McNemar tests on
paired right/wrong outcomes (a score >= 0.5 is right: F1 for short answers);
AIQ of the router's sweep, of the cascade (cheap first, escalate on a failed
check or a mean log-probability under the threshold; both answers paid), of
route-then-escalate, and of the task-label router, against the zero router (the
single models' hull) and an uninformative router's band. Plots every curve on
one set of axes (docs/local_routing.png); writes bench/results/local_router.json.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402

from modelyard.pipeline import router_file  # noqa: E402
from modelyard.training import cascade_eval, datasets, evaluate, features, selection  # noqa: E402
from modelyard.training.metrics import aiq, oracle_choice, outcome  # noqa: E402

OUTCOMES = ROOT / "data" / "routing" / "local_outcomes.jsonl"
SHIPPED = ROOT / "src" / "modelyard" / "data" / "routers" / "auto.npz"
CACHE = Path("~/.cache/modelyard/embeddings").expanduser()
RUNTIME = "onnx-int8"  # what the default fleet's route encoder (minilm-l2-int8) embeds routed prompts with
LAYERS = 2  # the route encoder keeps MiniLM's first 2 layers (bench/encoder_depth.py, bench/auto_policy.py)
TEST_FRACTION = 0.25
TARGETS = [round(t, 3) for t in np.linspace(0.1, 1.0, 37)]  # the alias's quality_target candidates
PLOT = ROOT / "docs" / "local_routing.png"


def mcnemar(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> dict[str, Any]:
    """Exact McNemar on paired outcomes (right = score >= 0.5): a right and b wrong vs the reverse."""
    ra, rb = a >= 0.5, b >= 0.5
    only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_first_right": only_a, "only_second_right": only_b, "p_value": round(float(p), 4)}


def choose(train: datasets.OutcomeTable, vectors: npt.NDArray[np.float32]) -> dict[str, Any]:
    """Learner by cross-validated AIQ, then the target, on the training part only."""
    # Only learners with a word view: the default alias asks the words first and skips the embedding when they
    # settle the pick (docs/routing.md), which a router without one never does.
    learners = [name for name in evaluate.LEARNERS if "lexical" in name and ("task" not in name or train.tasks)]
    learner, scores = selection.choose_learner(train, vectors, learners, 5, 0.7)
    router, predicted = evaluate.cross_validate(train, vectors, None, 5, learner)
    strong = int(np.argmax(train.quality.mean(axis=0)))
    cheap = int(np.argmin(train.cost.mean(axis=0)))
    floor = float(train.quality[:, strong].mean())
    by_target = {}
    for target in TARGETS:
        choice = router.choose_by_target(predicted, target)
        quality, cost = outcome(train.quality, train.cost, choice)
        by_target[target] = {"quality": quality, "cost": cost, "cheap_share": float((choice == cheap).mean())}
    keeping = [t for t in TARGETS if by_target[t]["quality"] >= floor - 1e-12]
    target = min(keeping, key=lambda t: (by_target[t]["cost"], -t)) if keeping else max(TARGETS, key=lambda t: by_target[t]["quality"])
    return {"learner": learner, "aiq_by_learner": scores, "target": target, "cv_by_target": by_target, "cv_strong_quality": floor}


def train_shipped(outcomes: Path, learner: str, target: float) -> str:
    command = [sys.executable, "-m", "modelyard.cli", "router", "train", "--data", str(outcomes), "--split", "train",
               "--learner", learner, "--target", str(target), "--embedding-runtime", RUNTIME,
               "--embedding-layers", str(LAYERS), "--out", str(SHIPPED)]
    subprocess.run(command, check=True)
    return shlex.join(["modelyard", *command[3:]]).replace(str(ROOT) + "/", "")


def curves(test: datasets.OutcomeTable, recorded: cascade_eval.Recorded, router: Any, predicted: npt.NDArray[np.float32],
           task_label: npt.NDArray[np.float32]) -> dict[str, list[tuple[float, float]]]:
    cheap, strong = int(np.argmin(test.cost.mean(axis=0))), int(np.argmax(test.quality.mean(axis=0)))
    settings = [router.choose_by_lambda(predicted, lam) for lam in evaluate.LAMBDAS] + [router.choose_by_target(predicted, t) for t in evaluate.TARGETS]
    label_settings = [router.choose_by_lambda(task_label, lam) for lam in evaluate.LAMBDAS] + [router.choose_by_target(task_label, t) for t in evaluate.TARGETS]
    return {
        "router": [outcome(test.quality, test.cost, c)[::-1] for c in settings],
        "task-label router": [outcome(test.quality, test.cost, c)[::-1] for c in label_settings],
        "cascade": [(cost, quality) for _, cost, quality, _ in cascade_eval.cascade_sweep(recorded, cheap, strong)],
        "route, then escalate": cascade_eval.combined_sweep(recorded, settings[::6], cheap, strong),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outcomes", default=str(OUTCOMES))
    parser.add_argument("--train", action="store_true", help="choose the learner and target on the training part and rewrite the shipped router")
    parser.add_argument("--draws", type=int, default=40, help="uninformative routers drawn for the band")
    args = parser.parse_args()
    outcomes = Path(args.outcomes)
    whole = datasets.load([outcomes])
    rows = {part: datasets.split_rows(whole.prompts, part, TEST_FRACTION) for part in ("train", "test")}
    train, test = whole.subset(rows["train"]), whole.subset(rows["test"])
    chosen = None
    if args.train:
        chosen = choose(train, features.embed(train.prompts, CACHE, runtime=RUNTIME, layers=LAYERS))
        chosen["command"] = train_shipped(outcomes, chosen["learner"], chosen["target"])
        print(f"chose {chosen['learner']} at target {chosen['target']} on the training part; ran: {chosen['command']}")
    router, header = router_file.load(SHIPPED)
    test = test.for_models(router.models)
    target = float(header.get("target", 0.7))  # type: ignore[arg-type]
    layers = header.get("embedding_layers")  # the shipped file's depth (None: the whole model)
    vectors = features.embed(test.prompts, CACHE, runtime=RUNTIME, layers=int(layers) if isinstance(layers, int) else None)
    predicted = evaluate.predict(router, test.prompts, vectors)
    task_label = evaluate.task_label_predictions(train.for_models(router.models), test)
    recorded = cascade_eval.load_recorded(outcomes).subset(rows["test"])
    result = evaluate_held_out(test, recorded, router, predicted, task_label, target, args.draws)
    result.update(outcomes=str(outcomes.relative_to(ROOT)) if outcomes.is_relative_to(ROOT) else str(outcomes), n_train=len(train.prompts),
                  router_header={k: v for k, v in header.items() if k not in ("tasks",)}, chosen_on_train=chosen, machine=machine())
    print_result(result)
    plot(result, PLOT)
    path = write_result("local_router", result)
    print(f"wrote {path} and {PLOT}")
    return 0


def evaluate_held_out(test: datasets.OutcomeTable, recorded: cascade_eval.Recorded, router: Any, predicted: npt.NDArray[np.float32],
                      task_label: npt.NDArray[np.float32], target: float, draws: int) -> dict[str, Any]:
    n = len(test.prompts)
    idx = np.arange(n)
    auto = router.choose_by_target(predicted, target)
    label_choice = router.choose_by_target(task_label, target)
    picks = {f"always {m}": np.full(n, j) for j, m in enumerate(test.models)}
    picks.update({"oracle": oracle_choice(test.quality, test.cost), f"task-label router (target {target:g})": label_choice, f"auto (target {target:g})": auto})
    arms = {name: {"accuracy": outcome(test.quality, test.cost, c)[0], "cost": outcome(test.quality, test.cost, c)[1],
                   "share": {m: float((c == j).mean()) for j, m in enumerate(test.models)}} for name, c in picks.items()}
    auto_scores = test.quality[idx, auto]
    tests = {f"auto vs {name}": mcnemar(auto_scores, test.quality[idx, c]) for name, c in picks.items() if not name.startswith("auto")}
    lo, hi = float(test.cost.mean(axis=0).min()), float(test.cost.mean(axis=0).max())
    points = curves(test, recorded, router, predicted, task_label)
    singles = [(float(test.cost[:, j].mean()), float(test.quality[:, j].mean())) for j in range(len(test.models))]
    zero = aiq(singles, lo, hi)
    aiqs = {name: aiq(p, lo, hi) for name, p in points.items()}
    spread = predicted.std(axis=0).astype(np.float64)
    band = selection.uninformative_band(test, spread, 5, target, draws)
    by_task = evaluate.by_task(test, auto)
    return {"n": n, "target": target, "arms": arms, "mcnemar": tests, "aiq": aiqs, "aiq_zero_router": zero,
            "aiq_gain": {k: v - zero for k, v in aiqs.items()}, "uninformative_band": {k: v for k, v in band.items() if k != "gains"},
            "beats_band": {k: (v - zero) > max(0.0, band["gain_high"]) for k, v in aiqs.items()},
            "by_task": by_task, "curves": {k: sorted(v) for k, v in points.items()}, "singles": dict(zip(test.models, singles, strict=True))}


def print_result(result: dict[str, Any]) -> None:
    out = [("held out", "accuracy", "cost per question ($)", "share per model")]
    out += [(name, f"{a['accuracy']:.3f}", f"{a['cost']:.3g}", ", ".join(f"{m} {s:.0%}" for m, s in a["share"].items())) for name, a in result["arms"].items()]
    print(table(out))
    rows = [("paired test", "p (exact McNemar)", "only auto right / only other right", "")]
    rows += [(name, f"{t['p_value']:.3f}", f"{t['only_first_right']} / {t['only_second_right']}", "") for name, t in result["mcnemar"].items()]
    print(table(rows))
    band = result["uninformative_band"]["gain_high"]
    rows = [("policy", "AIQ", "gain over zero router", f"above band (+{band:.4f})")]
    rows += [(name, f"{v:.4f}", f"{result['aiq_gain'][name]:+.4f}", "yes" if result["beats_band"][name] else "no") for name, v in result["aiq"].items()]
    rows.append(("zero router (single models' hull)", f"{result['aiq_zero_router']:.4f}", "", ""))
    print(table(rows))
    print(f"n = {result['n']} held-out questions ({result['n_train']} trained on)")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7.5, 5))
    styles = {"router": "tab:blue", "task-label router": "tab:purple", "cascade": "tab:orange", "route, then escalate": "tab:green"}
    for name, pts in result["curves"].items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, ".", ms=3, color=styles[name], alpha=0.6, label=f"{name} (AIQ {result['aiq'][name]:.3f})")
    singles = sorted(result["singles"].items(), key=lambda kv: kv[1][0])
    ax.plot([c for _, (c, _) in singles], [q for _, (_, q) in singles], "k--", lw=1, label=f"zero router (AIQ {result['aiq_zero_router']:.3f})")
    for name, (c, q) in singles:
        ax.scatter(c, q, color="black", zorder=4)
        ax.annotate(name, (c, q), fontsize=7, xytext=(4, -10), textcoords="offset points")
    oracle = result["arms"]["oracle"]
    ax.scatter(oracle["cost"], oracle["accuracy"], marker="*", s=120, color="gold", edgecolors="black", zorder=5, label="oracle")
    auto = next(a for n, a in result["arms"].items() if n.startswith("auto"))
    ax.scatter(auto["cost"], auto["accuracy"], marker="o", s=70, facecolors="none", edgecolors="tab:blue", lw=2, zorder=5, label="auto as shipped")
    ax.set_xlabel("cost per question (US$, replica-seconds x price)")
    ax.set_ylabel("accuracy (F1 for short answers)")
    ax.set_title(f"Local fleet, {result['n']} held-out questions")
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
