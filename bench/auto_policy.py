"""The default `auto` alias's routing policy, held out, by route encoder depth: code intent, code rule or neither.

    .venv/bin/python bench/auto_policy.py [--outcomes data/routing/local_outcomes.jsonl]

Until commit 68adb20 the default fleet's `auto` routed a prompt that no rule
took by a code intent first (cosine to ten example utterances,
``intent_separation.FORMER_CODE_INTENT``) and then by builtin:auto, both on
the whole int8 MiniLM at target 0.35. Now it has a ``code`` rule (lexical, no
embedding) in the intent's place, and builtin:auto on MiniLM's first layers
(the depth its file records; config/defaults.py). This replays the local fleet's questions through the
serving code (``resolve_model`` with the alias's assets, rules before any
vector and words first as the pipeline runs them) under three policies at
each depth:

- ``code intent``: the former default's intent before the learned router;
- ``router alone``: the learned router, no intent and no code rule;
- ``code rule``: the rule ``{code: true}`` to the intent's model in its place;

each with its depth's router: at 6 layers one trained by the former
documented command (``router train ... --learner knn+logistic+lexical
--target 0.35``, the training part); at the shipped file's depth the shipped
builtin:auto; at each other depth of ``--depths`` one whose learner and
target ``bench/local_router.py --train``'s rule chooses on the training part
at that depth. Each routes at its file's target, and where that differs
from 0.35 the code rule at 0.35 is replayed too (the depth's effect at the
former operating point). ``code intent, 6 layers`` is the former default
and the reference; ``code rule`` at the shipped depth is the default now.

On the held-out 25% (bench/local_router.py's split; nothing here is tuned on
it), and cross-validated over the whole table (5 folds, 3 shuffles; each
fold's router fitted as ``router train`` fits it, band included, on the other
four, so every question is routed once per shuffle by a router that never saw
it). Reports accuracy, cost, the coder model's share on code questions (mbpp,
human_eval) and on the rest, exact McNemar tests against the reference where
each question is routed once, paired bootstrap intervals (resampling
questions) of the accuracy and cost differences, and how many of the former
intent's ten example prompts (code questions unlike the table's) each policy
sends to the coder. Prints tables, writes bench/results/auto_policy.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table, write_result  # noqa: E402
from intent_separation import FORMER_CODE_INTENT  # noqa: E402
from local_router import CACHE, OUTCOMES, RUNTIME, SHIPPED, TEST_FRACTION, choose, mcnemar  # noqa: E402

from modelyard.config import AliasConfig, FleetConfig, RouteRule  # noqa: E402
from modelyard.config.defaults import default_fleet  # noqa: E402
from modelyard.pipeline import router_file  # noqa: E402
from modelyard.routing.learned import LearnedRouter  # noqa: E402
from modelyard.routing.router import AliasAssets, PromptFeatures, match_rule, resolve_model, settled_by_words  # noqa: E402
from modelyard.routing.semantic import IntentIndex  # noqa: E402
from modelyard.training import datasets, evaluate, features  # noqa: E402

CODE_TASKS = ("mbpp", "human_eval")
CODER = FORMER_CODE_INTENT.model
SEEDS = (0, 1, 2)
BOOTSTRAP = 2000
REFERENCE = "code intent, 6 layers"  # the default until this bench's change
FORMER_TARGET = 0.35
# The former builtin:auto's documented train command (whole encoder), on the training part.
FORMER_TRAIN = ["router", "train", "--data", str(OUTCOMES), "--split", "train", "--learner", "knn+logistic+lexical", "--target",
                str(FORMER_TARGET), "--embedding-runtime", RUNTIME]


@dataclasses.dataclass(frozen=True)
class Encoder:
    """One depth of the int8 MiniLM: the routed prompts' vectors and the intent examples'."""

    prompts: npt.NDArray[np.float32]
    examples: npt.NDArray[np.float32]


def picks(fleet: FleetConfig, alias: AliasConfig, router: LearnedRouter, prompts: list[str], encoder: Encoder) -> list[str]:
    """The model each prompt is served by, as the pipeline's routing step decides it: a rule without a vector, then
    the words when they settle the pick, then the vector (intents, then the learned router)."""
    fleet = dataclasses.replace(fleet, aliases=tuple(alias if a.name == alias.name else a for a in fleet.aliases))  # this policy's alias
    intents = IntentIndex.build(alias.intents, encoder.examples) if alias.intents else None
    assets = {alias.name: AliasAssets(learned=router, intents=intents)}
    chosen = []
    for prompt, vector in zip(prompts, encoder.prompts, strict=True):
        asked = PromptFeatures(text=prompt)
        if match_rule(alias.rules, asked) is None:  # a rule decides without a vector
            if alias.lexical_first:
                asked = dataclasses.replace(asked, words=router.word_view(prompt))
            if not alias.lexical_first or settled_by_words(alias, router, asked) is None:
                asked = dataclasses.replace(asked, embedding=vector)
        chosen.append(resolve_model(alias.name, fleet, asked, assets).model)
    return chosen


def interval(values: npt.NDArray[np.float64], question: npt.NDArray[np.int64], rng: np.random.Generator) -> list[float]:
    """The mean of paired differences and its 95% bootstrap interval, resampling questions (a question replayed by
    several shuffles is one sample: its replays are averaged first)."""
    per_question = np.bincount(question, values) / np.bincount(question)
    per_question = per_question[np.bincount(question) > 0]
    means = per_question[rng.integers(0, len(per_question), (BOOTSTRAP, len(per_question)))].mean(axis=1)
    return [float(per_question.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def summarise(table: datasets.OutcomeTable, chosen: list[str], reference: npt.NDArray[np.int64], question: npt.NDArray[np.int64],
              rng: np.random.Generator) -> dict[str, Any]:
    """One policy against the reference: each row is one routing of question ``question[row]`` of the table."""
    columns = np.array([table.models.index(m) for m in chosen])
    rows = np.arange(len(columns))
    is_code = np.array([task in CODE_TASKS for task in table.tasks])
    quality, cost = table.quality[rows, columns], table.cost[rows, columns]
    coder = columns == table.models.index(CODER)
    once = len(np.unique(question)) == len(question)
    return {
        "accuracy": float(quality.mean()), "cost": float(cost.mean()), "coder_share": float(coder.mean()),
        "coder_share_code": float(coder[is_code].mean()), "coder_share_other": float(coder[~is_code].mean()),
        "accuracy_code": float(quality[is_code].mean()), "accuracy_other": float(quality[~is_code].mean()),
        "picks_differing_from_reference": int((columns != reference).sum()),
        # McNemar's pairs must be independent: only where each question is routed once (the held-out part).
        "mcnemar_vs_reference": mcnemar(quality, table.quality[rows, reference]) if once else None,
        "accuracy_minus_reference": interval(quality - table.quality[rows, reference], question, rng),
        "cost_minus_reference": interval((cost - table.cost[rows, reference]).astype(np.float64), question, rng),
    }


@dataclasses.dataclass(frozen=True)
class Depth:
    """A route encoder depth, the router file routing at it, and that file's learner and target."""

    layers: int | None
    router: LearnedRouter
    learner: str
    target: float

    @property
    def name(self) -> str:
        return f"{self.layers or 6} layers"


def depths(tmp: Path, others: list[int]) -> list[Depth]:
    """The former default's router (6 layers), one chosen and trained at each of ``others``, and the shipped one."""
    former = tmp / "auto-6layers.npz"
    subprocess.run([str(ROOT / ".venv" / "bin" / "modelyard"), *FORMER_TRAIN, "--out", str(former)], check=True, capture_output=True)
    paths = [former]
    whole = datasets.load([OUTCOMES])
    train = whole.subset(datasets.split_rows(whole.prompts, "train", TEST_FRACTION))
    for layers in others:
        chosen = choose(train, features.embed(train.prompts, CACHE, runtime=RUNTIME, layers=layers))
        paths.append(tmp / f"auto-{layers}layers.npz")
        command = [*FORMER_TRAIN[:FORMER_TRAIN.index("--learner")], "--learner", chosen["learner"], "--target", str(chosen["target"]),
                   "--embedding-runtime", RUNTIME, "--embedding-layers", str(layers), "--out", str(paths[-1])]
        subprocess.run([str(ROOT / ".venv" / "bin" / "modelyard"), *command], check=True, capture_output=True)
    out = []
    for path in [*paths, SHIPPED]:
        router, header = router_file.load(path)
        layers = header.get("embedding_layers")
        out.append(Depth(int(layers) if isinstance(layers, int) else None, router, str(header["learner"]), float(header["target"])))  # type: ignore[arg-type]
    return out


def policies(alias: AliasConfig, target: float) -> dict[str, AliasConfig]:
    """The default alias with the former code intent, with neither, and with its code rule, at ``target``; and with
    its code rule at the former target when ``target`` differs (the depth's effect alone, at one operating point)."""
    base = dataclasses.replace(alias, rules=tuple(r for r in alias.rules if r.code is None), intents=(), quality_target=target)
    code_rule = RouteRule(model=CODER, name="code", code=True)
    out = {"code intent": dataclasses.replace(base, intents=(FORMER_CODE_INTENT,)), "router alone": base,
           "code rule": dataclasses.replace(base, rules=(*base.rules, code_rule))}
    if target != FORMER_TARGET:
        out[f"code rule at target {FORMER_TARGET:g}"] = dataclasses.replace(out["code rule"], quality_target=FORMER_TARGET)
    return out


def fold_router(table: datasets.OutcomeTable, vectors: npt.NDArray[np.float32], learner: str) -> LearnedRouter:
    """What ``router train`` with ``learner`` writes, fitted in process."""
    router = evaluate.fit(table, vectors, None, learner)
    return dataclasses.replace(router, word_band=evaluate.word_band(table, vectors, None, 5, learner))


def cross_validated(fleet: FleetConfig, alias: AliasConfig, whole: datasets.OutcomeTable, levels: list[Depth]) -> tuple[dict[str, list[str]], list[int]]:
    """Each policy's pick for every question of every shuffle, from routers fitted on the other folds; the questions' order."""
    chosen: dict[str, list[str]] = {}
    order: list[int] = []
    examples = list(FORMER_CODE_INTENT.examples)
    for level in levels:
        vectors = features.embed(whole.prompts, CACHE, runtime=RUNTIME, layers=level.layers)
        example_vectors = features.embed(examples, CACHE, runtime=RUNTIME, layers=level.layers)
        for seed in SEEDS:
            for test_rows, train_rows in evaluate.fold_splits(len(whole.prompts), 5, seed):
                router = fold_router(whole.subset(train_rows), vectors[train_rows], level.learner)
                encoder = Encoder(vectors[test_rows], example_vectors)
                prompts = [whole.prompts[i] for i in test_rows]
                if level is levels[0]:
                    order.extend(int(i) for i in test_rows)
                for name, policy in policies(alias, level.target).items():
                    chosen.setdefault(f"{name}, {level.name}", []).extend(picks(fleet, policy, router, prompts, encoder))
    return chosen, order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", default=str(OUTCOMES))
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--depths", default="3", help="comma-separated other depths (1 to 5) to choose, train and replay a router at")
    args = parser.parse_args()
    others = sorted({int(d) for d in args.depths.split(",") if d}, reverse=True)
    if any(not 1 <= d <= 5 for d in others):
        parser.error("--depths are layer counts from 1 to 5 (6, the whole model, and the shipped depth always run)")
    fleet = default_fleet()
    alias = fleet.alias("auto")
    assert alias is not None
    with tempfile.TemporaryDirectory() as tmp:
        levels = depths(Path(tmp), [d for d in others if d != router_file.load(SHIPPED)[1].get("embedding_layers")])
    models = levels[-1].router.models
    whole = datasets.load([Path(args.outcomes)]).for_models(models)
    test = whole.subset(datasets.split_rows(whole.prompts, "test", TEST_FRACTION))
    examples = list(FORMER_CODE_INTENT.examples)
    chosen: dict[str, list[str]] = {}
    examples_to_coder: dict[str, int] = {}
    for level in levels:
        encoder = Encoder(features.embed(test.prompts, CACHE, runtime=RUNTIME, layers=level.layers),
                          features.embed(examples, CACHE, runtime=RUNTIME, layers=level.layers))
        own = Encoder(encoder.examples, encoder.examples)  # the intent's own examples, routed as prompts
        for name, policy in policies(alias, level.target).items():
            chosen[f"{name}, {level.name}"] = picks(fleet, policy, level.router, test.prompts, encoder)
            examples_to_coder[f"{name}, {level.name}"] = sum(m == CODER for m in picks(fleet, policy, level.router, examples, own))
    rng = np.random.default_rng(args.seed)
    held_out = {"n": len(test.prompts), "n_code": sum(t in CODE_TASKS for t in test.tasks),
                "policies": summaries(test, chosen, np.arange(len(test.prompts)), rng)}
    folds, order = cross_validated(fleet, alias, whole, levels)
    question = np.array(order)
    cv = {"n": len(whole.prompts), "seeds": list(SEEDS), "n_code": sum(t in CODE_TASKS for t in whole.tasks),
          "policies": summaries(whole.subset(question), folds, question, rng)}
    result = {"reference": REFERENCE, "default": f"code rule, {levels[-1].name}", "held_out": held_out, "cross_validated": cv,
              "intent_examples": {"n": len(examples), "to_coder": examples_to_coder}, "code_tasks": list(CODE_TASKS), "bootstrap": BOOTSTRAP,
              "routers": {level.name: {"learner": level.learner, "target": level.target} for level in levels},
              "former_train_command": " ".join(FORMER_TRAIN), "machine": machine()}
    print_result("held out", held_out)
    print_result(f"cross-validated (5 folds x {len(SEEDS)} shuffles)", cv)
    print(table([("policy", f"of the former intent's {len(examples)} example code prompts, sent to {CODER}")]
                + [(name, str(n)) for name, n in examples_to_coder.items()]))
    print(f"wrote {write_result('auto_policy', result)}")
    return 0


def summaries(table: datasets.OutcomeTable, chosen: dict[str, list[str]], question: npt.NDArray[np.int64],
              rng: np.random.Generator) -> dict[str, Any]:
    reference = np.array([table.models.index(m) for m in chosen[REFERENCE]])
    return {name: summarise(table, c, reference, question, rng) for name, c in chosen.items()}


def print_result(title: str, result: dict[str, Any]) -> None:
    rows: list[tuple[str, ...]] = [(title, "accuracy (code / other)", "cost per question ($)", "coder share: code / other",
                                    "picks differ", "accuracy − former [95%]", "cost − former [95%]", "McNemar p")]
    for name, p in result["policies"].items():
        acc, cost = p["accuracy_minus_reference"], p["cost_minus_reference"]
        rows.append((name, f"{p['accuracy']:.3f} ({p['accuracy_code']:.3f} / {p['accuracy_other']:.3f})", f"{p['cost']:.3g}",
                     f"{p['coder_share_code']:.0%} / {p['coder_share_other']:.0%}", str(p["picks_differing_from_reference"]),
                     f"{acc[0]:+.3f} [{acc[1]:+.3f}, {acc[2]:+.3f}]", f"{cost[0]:+.2g} [{cost[1]:+.2g}, {cost[2]:+.2g}]",
                     "—" if p["mcnemar_vs_reference"] is None else f"{p['mcnemar_vs_reference']['p_value']:.3f}"))
    print(table(rows))
    print(f"n = {result['n']} questions, {result['n_code']} of them code (mbpp, human_eval)")


if __name__ == "__main__":
    sys.exit(main())
