"""Public per-prompt outcome tables, read as published (see ../shared/data/README.md)."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FORMATS = ("routerbench", "llmrouter", "routellm", "outcomes")
# RouteLLM's MMLU tables carry no prices; these are the two models' list prices per 1M input tokens (late 2023).
ROUTELLM_PRICES = {"mistralai/Mixtral-8x7B-Instruct-v0.1": 0.6, "gpt-4-1106-preview": 10.0}
LLMROUTER_OUTPUT_TOKENS = 256  # the table has no answer lengths: priced as a fixed-size answer


@dataclass(frozen=True)
class OutcomeTable:
    prompts: list[str]
    models: tuple[str, ...]
    quality: npt.NDArray[np.float64]  # (n, m) in 0..1
    cost: npt.NDArray[np.float64]  # (n, m) US dollars per prompt
    source: str
    tasks: tuple[str, ...] = ()  # each prompt's task (data set, subject, cluster) when the table says; empty when not

    def subset(self, rows: npt.NDArray[np.int64]) -> OutcomeTable:
        tasks = tuple(self.tasks[i] for i in rows) if self.tasks else ()
        return OutcomeTable([self.prompts[i] for i in rows], self.models, self.quality[rows], self.cost[rows], self.source, tasks)

    def for_models(self, models: tuple[str, ...]) -> OutcomeTable:
        """The table's columns for ``models``, in that order (a router's order); ``ValueError`` naming any the table lacks."""
        missing = [m for m in models if m not in self.models]
        if missing:
            raise ValueError(f"the data has no column for {', '.join(missing)} (it has {', '.join(self.models)})")
        columns = [self.models.index(m) for m in models]
        return OutcomeTable(self.prompts, models, self.quality[:, columns], self.cost[:, columns], self.source, self.tasks)


SPLITS = ("all", "train", "test")


def split(table: OutcomeTable, part: str, test_fraction: float) -> OutcomeTable:
    """The rows of one part of a fixed split: a prompt is in ``test`` when its hash falls below ``test_fraction``.

    The split depends on the prompt text only, so train and eval agree on it
    without storing it, and a prompt never moves between parts.
    """
    if part == "all":
        return table
    return table.subset(split_rows(table.prompts, part, test_fraction))


def split_rows(prompts: list[str], part: str, test_fraction: float) -> np.ndarray:
    """The row indices of ``part`` (``train`` or ``test``) of :func:`split`."""
    in_test = np.array([_unit_hash(p) < test_fraction for p in prompts], dtype=bool)
    return np.flatnonzero(in_test if part == "test" else ~in_test)


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def detect_format(path: Path) -> str:
    if path.is_dir() or path.name.startswith("mmlu_"):
        return "routellm"
    if path.suffix == ".jsonl":
        return "outcomes"
    if path.suffix == ".json":
        return "llmrouter"
    header = path.open(encoding="utf-8").readline()
    if "|total_cost" in header:
        return "routerbench"
    if header.count(",") == 2 and header.startswith("prompt,"):
        return "routellm"
    raise ValueError(f"{path}: cannot tell the format; pass --format {'|'.join(FORMATS)}")


def load(paths: list[Path], fmt: str | None = None) -> OutcomeTable:
    tables = [_load_one(p, fmt or detect_format(p)) for p in paths]
    models = tables[0].models
    for t in tables[1:]:
        if t.models != models:
            raise ValueError(f"{t.source}: its models {t.models} differ from {tables[0].source}'s {models}")
    tasks = tuple(task for t in tables for task in t.tasks) if all(t.tasks for t in tables) else ()
    return OutcomeTable(
        [p for t in tables for p in t.prompts], models, np.vstack([t.quality for t in tables]), np.vstack([t.cost for t in tables]),
        ", ".join(t.source for t in tables), tasks,
    )


def _load_one(path: Path, fmt: str) -> OutcomeTable:
    if fmt == "routerbench":
        return _routerbench(path)
    if fmt == "llmrouter":
        return _llmrouter(path)
    if fmt == "routellm":
        return _routellm(path)
    if fmt == "outcomes":
        return _outcomes(path)
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _routerbench(path: Path) -> OutcomeTable:
    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    models = tuple(c[: -len("|total_cost")] for c in rows[0] if c.endswith("|total_cost"))
    prompts, quality, cost = [], [], []
    for row in rows:
        try:
            q = [float(row[m]) for m in models]
            c = [float(row[f"{m}|total_cost"]) for m in models]
        except ValueError:
            continue  # a few ARC rows have no score: dropped, as the data's README says
        if any(math.isnan(v) for v in q + c):
            continue
        prompts.append(_routerbench_prompt(row["prompt"]))
        quality.append(q)
        cost.append(c)
    task = path.stem.removeprefix("routerbench_").removesuffix("_train")  # one task per file
    return OutcomeTable(prompts, models, np.array(quality), np.array(cost), path.name, (task,) * len(prompts))


def _routerbench_prompt(raw: str) -> str:
    """RouterBench stores each prompt as a Python list literal of strings (the turns); joined here."""
    if raw.startswith("[") and raw.endswith("]"):
        try:
            turns = ast.literal_eval(raw)  # a literal only: no code runs
        except (ValueError, SyntaxError):
            return raw
        if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
            return "\n\n".join(turns)
    return raw


def _llmrouter(path: Path, prices_path: Path | None = None) -> OutcomeTable:
    data = json.loads(path.read_text(encoding="utf-8"))
    prices = json.loads((prices_path or path.with_name("llmrouter_llm_prices.json")).read_text(encoding="utf-8"))
    models = tuple(data[0]["scores"])
    prompts = [d["question"] for d in data]
    quality = np.array([[float(d["scores"][m]) for m in models] for d in data])
    tokens_in = np.array([len(p) / 4 for p in prompts])[:, None]
    price_in = np.array([prices[m]["input_price"] for m in models])[None, :]
    price_out = np.array([prices[m]["output_price"] for m in models])[None, :]
    cost = (tokens_in * price_in + LLMROUTER_OUTPUT_TOKENS * price_out) / 1e6
    tasks = tuple(f"cluster {d['cluster_id']}" for d in data) if all("cluster_id" in d for d in data) else ()
    return OutcomeTable(prompts, models, quality, cost, path.name, tasks)


def _routellm(path: Path) -> OutcomeTable:
    files = sorted(path.glob("mmlu_*.csv")) if path.is_dir() else [path]
    prompts, quality, tasks = [], [], []
    models: tuple[str, ...] = ()
    for file in files:
        subject = file.stem.removeprefix("mmlu_")
        with file.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            models = tuple(header[1:3])
            for row in reader:
                prompts.append(row[0])
                tasks.append(subject)
                quality.append([float(row[1] == "True" or row[1] == "1" or row[1] == "1.0"), float(row[2] == "True" or row[2] == "1" or row[2] == "1.0")])
    tokens = np.array([len(p) / 4 for p in prompts])[:, None]
    price = np.array([ROUTELLM_PRICES.get(m, 1.0) for m in models])[None, :]
    return OutcomeTable(prompts, models, np.array(quality), tokens * price / 1e6, path.name, tuple(tasks))


def _outcomes(path: Path) -> OutcomeTable:
    """What ``modelyard router collect`` writes: one JSON object a line, {prompt, scores{model}, costs{model}}."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    models = tuple(rows[0]["scores"])
    quality = np.array([[float(r["scores"][m]) for m in models] for r in rows])
    cost = np.array([[float(r.get("costs", {}).get(m, 0.0)) for m in models] for r in rows])
    tasks = tuple(str(r["task"]) for r in rows) if all("task" in r for r in rows) else ()
    return OutcomeTable([r["prompt"] for r in rows], models, quality, cost, path.name, tasks)
