"""``modelyard router train | eval | cv``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from modelyard.pipeline import router_file
from modelyard.training import datasets, evaluate, features


def _table_and_embeddings(args: argparse.Namespace, header: dict[str, Any] | None = None) -> tuple[datasets.OutcomeTable, Any]:
    """The outcome table and its prompts' vectors; for a router (``header``), cut to the depth it was trained on unless told."""
    if args.embedding_layers is None and header and header.get("embedding_layers") is not None:
        args.embedding_layers = int(header["embedding_layers"])
        args.embedding_runtime = "onnx-int8"  # the only runtime a cut encoder is trained on
    if args.embedding_layers is not None and (args.embedding_runtime != "onnx-int8" or args.embedding_layers < 1):
        raise SystemExit("modelyard: --embedding-layers takes a positive number and needs --embedding-runtime onnx-int8")
    table = datasets.split(datasets.load([Path(p) for p in args.data], args.format), args.split, args.test_fraction)
    return table, features.embed(table.prompts, Path(args.cache_dir).expanduser(), runtime=args.embedding_runtime, layers=args.embedding_layers)


def train(args: argparse.Namespace) -> int:
    table, embeddings = _table_and_embeddings(args)
    router = evaluate.fit(table, embeddings, args.k, args.learner)
    if not 0.5 < args.band_quantile <= 1.0:
        print(f"modelyard: --band-quantile must be above 0.5 and at most 1, not {args.band_quantile:g}")
        return 2
    band = evaluate.word_band(table, embeddings, args.k, args.band_folds, args.learner, args.band_quantile) if args.band_folds > 1 else None
    router = dataclasses.replace(router, word_band=band)
    meta = {"target": args.target, "learner": args.learner, "trained_on": table.source, "split": args.split, "n": len(table.prompts),
            "embedding_runtime": args.embedding_runtime, "embedding_layers": args.embedding_layers}
    router_file.save(router, Path(args.out), meta)
    print(f"trained on {len(table.prompts)} prompts x {len(table.models)} models ({table.source}); wrote {args.out}")
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    router, header = router_file.load(Path(args.router))
    table, embeddings = _table_and_embeddings(args, header)
    try:
        matched = table.for_models(router.models)  # by name: the data may list the router's models in any order
    except ValueError as exc:
        print(f"modelyard: cannot evaluate this router on this data: {exc}")
        return 2
    extra = [m for m in table.models if m not in router.models]
    if extra:
        print(f"note: the data's {', '.join(extra)} are not among the router's models and are left out")
    table = matched
    target = args.target if args.target is not None else float(header.get("target", 0.9))  # type: ignore[arg-type]
    predicted = evaluate.predict(router, table.prompts, embeddings)
    result = evaluate.report(table, router, predicted, target)
    words = evaluate.words_first(router, table.prompts, predicted, target)
    if words is not None:
        result["words_first"] = words
    return _print(result, args.json, args.group_by)


def shares_cmd(args: argparse.Namespace) -> int:
    """Write, per quality target, where the router sends the table's prompts and what that scores (for ``plan --target-shares``)."""
    router, header = router_file.load(Path(args.router))
    table, embeddings = _table_and_embeddings(args, header)
    try:
        table = table.for_models(router.models)
        targets = tuple(float(t) for t in args.targets.split(",") if t.strip())
    except ValueError as exc:
        print(f"modelyard: {exc}")
        return 2
    if not targets or any(not 0.0 <= t <= 1.0 for t in targets):
        print("modelyard: --targets: expected comma-separated numbers in 0..1")
        return 2
    rows = evaluate.target_shares(table, router, evaluate.predict(router, table.prompts, embeddings), targets)
    result = {"router": args.router, "data": table.source, "split": args.split, "n": len(table.prompts), "models": list(router.models),
              "router_target": header.get("target"), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(m) for m in router.models)
    print(f"{'target':>6}  {'quality':>7}  {'cost/request':>12}  " + "  ".join(f"to {m:<{width}}" for m in router.models))
    for row in rows:
        print(f"{row['target']:>6g}  {row['quality']:>7.4f}  {row['cost_per_request']:>12.4g}  " + "  ".join(f"{row['shares'][m]:>{width + 3}.1%}" for m in router.models))
    print(f"wrote {args.out} ({len(table.prompts)} prompts of {table.source})")
    return 0


def cross_validate(args: argparse.Namespace) -> int:
    table, embeddings = _table_and_embeddings(args)
    router, predicted = evaluate.cross_validate(table, embeddings, args.k, args.folds, args.learner)
    result = evaluate.report(table, router, predicted, args.target)
    result.update(cross_validation_folds=args.folds, learner=args.learner)
    if table.tasks:
        from modelyard.training.selection import task_label_cv

        result["aiq_task_label"] = task_label_cv(table, args.folds, [0], args.target)[0]
    if args.plot:
        from modelyard.training.plot import plot_reports

        plot_reports([(f"{table.source} ({args.folds}-fold CV, {args.learner})", result)], Path(args.plot))
    return _print(result, args.json, args.group_by)


def _print(result: dict[str, Any], as_json: bool, group_by: str | None = None) -> int:
    rows = [("", "quality", "cost per prompt ($)")]
    for name, s in result["baselines"]["single_models"].items():
        rows.append((f"always {name}", f"{s['quality']:.4f}", f"{s['cost']:.6g}"))
    rows.append(("random", f"{result['baselines']['random']['quality']:.4f}", f"{result['baselines']['random']['cost']:.6g}"))
    rows.append((f"router (target {result['router_target']:g})", f"{result['router_quality']:.4f}", f"{result['router_cost']:.6g}"))
    rows.append(("oracle", f"{result['oracle_quality']:.4f}", f"{result['oracle_cost']:.6g}"))
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0].ljust(width)}  {r[1]:>8}  {r[2]:>14}")
    print("router's prompts per model: " + ", ".join(f"{name} {share:.1%}" for name, share in result["router_share"].items()))
    print(f"best single: {result['best_single_model']} ({result['best_single_quality']:.4f} at ${result['best_single_cost']:.6g})")
    at_best = result["router_cost_at_best_single_quality"]
    share = "never" if at_best is None else f"${at_best:.6g} ({at_best / result['best_single_cost']:.1%} of its cost)"
    print(f"router reaches it at: {share}")
    print(f"AIQ: router {result['aiq_router']:.4f}, best single {result['aiq_best_single']:.4f}")
    if "aiq_task_label" in result:
        print(f"AIQ of a router told each prompt's task (same folds): {result['aiq_task_label']:.4f}")
    if "apgr" in result:
        print(f"APGR {result['apgr']:.4f}, CPT(50%) {result['cpt50']}, CPT(80%) {result['cpt80']}")
    if "words_first" in result:
        words = result["words_first"]
        print(f"settled by words (no embedding when served with lexical_first): {words['settled_share']:.1%} of prompts, "
              f"{words['differing_picks']} of them picked differently")
    if group_by == "task":
        _print_by_task(result)
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "sweep"}))
    return 0


def _print_by_task(result: dict[str, Any]) -> None:
    groups = result.get("by_task")
    if not groups:
        print("by task: this data has no task labels")
        return
    models = result["models"]
    header = ["task", "n", *[f"q {m}" for m in models], "q router", "cost router", *[f"to {m}" for m in models]]
    rows = [header] + [
        [task, str(g["n"]), *[f"{g['single_models'][m]:.3f}" for m in models], f"{g['router_quality']:.3f}", f"{g['router_cost']:.3g}",
         *[f"{g['router_share'][m]:.0%}" for m in models]]
        for task, g in groups.items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))))


def collect_cmd(args: argparse.Namespace) -> int:
    import asyncio

    from modelyard.config import load_config
    from modelyard.config.defaults import default_fleet
    from modelyard.fleet.artifacts import ArtifactError, prepare
    from modelyard.training.collect import collect, collection_fleet
    from modelyard.training.questions import load_questions, sample

    fleet = load_config(args.config) if args.config else default_fleet()
    data_dir = Path(args.data_dir or fleet.server.data_dir).expanduser()
    try:
        config = collection_fleet(fleet, [m.strip() for m in args.models.split(",") if m.strip()])
        prepare(config, data_dir / "models")
    except (ValueError, ArtifactError) as exc:
        print(f"modelyard: {exc}")
        return 2
    questions = load_questions(Path(args.questions))
    if args.tasks:
        wanted = set(args.tasks.split(","))
        questions = [q for q in questions if q.task in wanted]
    try:
        per_task = parse_per_task(args.per_task)
    except ValueError as exc:
        print(f"modelyard: --per-task: {exc}")
        return 2
    chosen = sample(questions, per_task, args.seed)[: args.limit]
    print(f"{len(chosen)} questions ({len({q.task for q in chosen})} tasks) x {len(config.models)} models -> {args.out}")
    from modelyard.planning.replay import ProgressBar

    bar = ProgressBar()
    asked = asyncio.run(collect(config, chosen, Path(args.out), data_dir, args.concurrency, bar if bar.enabled else None))
    print(f"asked {asked} questions ({len(chosen) - asked} were already in {args.out})")
    return 0


def parse_per_task(text: str) -> int | dict[str, int]:
    """``60`` (every task) or ``mbpp=50,gsm8k=40`` (those tasks only)."""
    if "=" not in text:
        return int(text)
    counts = {}
    for part in text.split(","):
        task, _, count = part.partition("=")
        if not task.strip() or not count.strip().isdigit():
            raise ValueError(f"expected TASK=COUNT, got {part!r}")
        counts[task.strip()] = int(count)
    return counts


def add_commands(sub: Any) -> None:
    router = sub.add_parser("router", help="train and evaluate the learned cost/quality router").add_subparsers(dest="action", required=True)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", action="append", required=True, help="an outcome table (repeat for several); a RouteLLM folder works too")
        p.add_argument("--format", choices=datasets.FORMATS, help="default: detected from the file")
        p.add_argument("--cache-dir", default="~/.cache/modelyard/embeddings", help="where prompt embeddings are cached")
        p.add_argument("--split", choices=datasets.SPLITS, default="all", help="use one part of a fixed split by prompt hash (train or test)")
        p.add_argument("--test-fraction", type=float, default=0.25, help="the share of prompts in the test part")
        p.add_argument("--embedding-runtime", choices=("torch", "onnx-int8"), default="torch",
                       help="MiniLM on PyTorch, or the int8 ONNX graph the default fleet serves routers with (minilm-l2-int8, with --embedding-layers 2)")
        p.add_argument("--embedding-layers", type=int,
                       help="onnx-int8 only: MiniLM cut to its first N layers, as a deployment with `layers: N` embeds (eval and shares: "
                            "the router file's, by default)")

    p = router.add_parser("train", help="train a router on outcome tables")
    data_args(p)
    p.add_argument("--out", required=True, help="the router file to write (.npz)")
    p.add_argument("--k", type=int, help="neighbours per prediction (default: 2%% of the training prompts, at least 16)")
    p.add_argument("--learner", choices=evaluate.LEARNERS, default=evaluate.DEFAULT_LEARNER, help="neighbour vote, embedding probe, or their average")
    p.add_argument("--target", type=float, default=0.9, help="default quality target (0..1 of the best prediction)")
    p.add_argument("--band-folds", type=int, default=5,
                   help="folds that measure how far the embedding view strays from the word view, so serving can skip the "
                        "embedding when the words settle the pick (learners with lexical; 0: no band, always embed)")
    p.add_argument("--band-quantile", type=float, default=evaluate.WORD_BAND_QUANTILE,
                   help=f"the band spans this quantile of the out-of-fold gap and 1 minus it (default {evaluate.WORD_BAND_QUANTILE:g}; narrower settles more "
                        "picks and risks more that differ from the full router's: bench/word_settle.py --quantiles)")
    p.set_defaults(func=train)
    p = router.add_parser("eval", help="evaluate a router on an outcome table")
    data_args(p)
    p.add_argument("--router", required=True)
    p.add_argument("--target", type=float, help="override the router's quality target")
    p.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    p.add_argument("--group-by", choices=("task",), help="also report per task (data set, subject or cluster)")
    p.set_defaults(func=evaluate_cmd)
    p = router.add_parser("shares", help="per quality target: where the router sends a table's prompts, and their recorded quality and cost "
                          "(input of `modelyard plan --target-shares`)")
    data_args(p)
    p.add_argument("--router", required=True)
    p.add_argument("--targets", default=",".join(f"{t:g}" for t in evaluate.SHARE_TARGETS), help="comma-separated quality targets (0..1)")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.set_defaults(func=shares_cmd)

    p = router.add_parser("cv", help="cross-validate on the training tables (out-of-fold predictions)")
    data_args(p)
    p.add_argument("--k", type=int, help="neighbours per prediction (default: 2%% of the training prompts, at least 16)")
    p.add_argument("--learner", choices=evaluate.LEARNERS, default=evaluate.DEFAULT_LEARNER)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--plot", help="also save the cost/quality curve as a PNG")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--json", action="store_true")
    p.add_argument("--group-by", choices=("task",), help="also report per task (data set, subject or cluster)")
    p.set_defaults(func=cross_validate)
    p = router.add_parser("collect", help="run the fleet's models on checkable questions and write an outcome table (resumable: appends)")
    p.add_argument("--questions", required=True, help="LLMRouter-style JSONL (task_name, query, ground_truth, metric, choices)")
    p.add_argument("--models", required=True, help="comma-separated chat models of the fleet, e.g. smollm2-135m,qwen2.5-0.5b")
    p.add_argument("--out", required=True, help="the outcome table to write (.jsonl)")
    p.add_argument("--per-task", default="60", help="questions drawn from each task: a count, or TASK=COUNT,... (those tasks only)")
    p.add_argument("--tasks", help="comma-separated tasks to keep (default: every checkable task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="stop after this many questions of the (shuffled, repeatable) sample")
    p.add_argument("--concurrency", type=int, default=1, help="questions in flight at once (each model's engine batches them)")
    p.add_argument("--config", help="a fleet file (default: the embedded fleet)")
    p.add_argument("--data-dir", help="where model files live (default ~/.cache/modelyard)")
    p.set_defaults(func=collect_cmd)
