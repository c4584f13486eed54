"""Questions with machine-checkable answers: the prompt each model sees, and how its answer is scored.

Two kinds are kept from the LLMRouter question file: multiple choice (the
``em_mc`` tasks: the model answers with a letter) and numeric (GSM8K and
MGSM: the last number in the answer is compared with the ground truth). Tasks
that need a judge or running code (open QA F1, MATH's free-form answers,
MBPP/HumanEval, CommonGen) are skipped.
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["choice", "number"]
LETTERS = "ABCDEFGHIJ"
CHOICE_INSTRUCTION = "Answer with the letter of the correct option only."
NUMBER_INSTRUCTION = "Solve it step by step, then write the final answer as a number on the last line."
NUMBER_TASKS = ("gsm8k", "agentverse-mgsm")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"(?<![A-Za-z])([A-J])(?![A-Za-z])")


@dataclass(frozen=True, slots=True)
class Question:
    """One question: what the model is asked and the answer that scores 1."""

    task: str
    kind: Kind
    prompt: str
    answer: str  # a letter, or a number written without separators


def load_questions(path: Path) -> list[Question]:
    """Every machine-checkable question in an LLMRouter-style JSONL file, in file order."""
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: prompts hold U+2028
        if line.strip():
            question = _question(json.loads(line))
            if question is not None:
                out.append(question)
    return out


def sample(questions: list[Question], per_task: int, seed: int) -> list[Question]:
    """Up to ``per_task`` questions of each task, drawn with a fixed seed (the same call, the same sample)."""
    by_task: dict[str, list[Question]] = {}
    for q in questions:
        by_task.setdefault(q.task, []).append(q)
    rng = random.Random(seed)
    chosen = []
    for task in sorted(by_task):
        pool = by_task[task]
        chosen += rng.sample(pool, min(per_task, len(pool)))
    rng.shuffle(chosen)
    return chosen


def score(question: Question, answer: str) -> float:
    """1.0 when the answer is right, else 0.0."""
    if question.kind == "choice":
        found = _LETTER.search(answer.strip()[:40])  # case kept: "a" is an article, "A" an option
        return float(found is not None and found.group(1) == question.answer)
    numbers = _NUMBER.findall(answer.replace("$", ""))
    if not numbers:
        return 0.0
    return float(_same_number(numbers[-1], question.answer))


def _question(row: dict[str, Any]) -> Question | None:
    task, metric = str(row.get("task_name", "")), str(row.get("metric", ""))
    query = str(row.get("query", "")).strip()
    if metric == "em_mc":
        options = _options(row.get("choices"))
        answer = str(row.get("ground_truth", "")).strip().upper()
        if not options or answer not in LETTERS[: len(options)]:
            return None
        lines = "\n".join(f"{label}. {text}" for label, text in zip(LETTERS, options, strict=False))
        return Question(task, "choice", f"{query}\n\n{lines}\n\n{CHOICE_INSTRUCTION}", answer)
    if task in NUMBER_TASKS:
        truth = str(row.get("ground_truth", "")).split("####")[-1]
        numbers = _NUMBER.findall(truth)
        if not numbers:
            return None
        return Question(task, "number", f"{query}\n\n{NUMBER_INSTRUCTION}", numbers[-1].replace(",", ""))
    return None


def _options(raw: object) -> list[str]:
    """The option texts: the file stores them as a Python literal (a list, or a dict with a 'text' list)."""
    if not isinstance(raw, str) or raw in ("", "None"):
        return []
    try:
        value = ast.literal_eval(raw)  # a literal only: no code runs
    except (ValueError, SyntaxError):
        return []
    if isinstance(value, dict):
        value = value.get("text", [])
    return [str(v) for v in value] if isinstance(value, list) else []


def _same_number(said: str, truth: str) -> bool:
    try:
        return abs(float(said.replace(",", "")) - float(truth)) < 1e-6
    except ValueError:
        return False
