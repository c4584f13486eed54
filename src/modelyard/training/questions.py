"""Questions with machine-checkable answers: the prompt each model sees, and how its answer is scored.

Four kinds are kept from the LLMRouter question file (scored by
:mod:`modelyard.training.scoring`, no judge model):

- ``choice``: the ``em_mc`` tasks; the model answers with a letter.
- ``number``: GSM8K, MGSM, and MATH problems whose answer is a number.
- ``short``: Natural Questions and TriviaQA; a short answer scored by token F1.
- ``code``: MBPP and HumanEval; the answer's code runs with the task's tests
  in the sandbox.

MATH problems with symbolic answers and CommonGen (which needs a judge) are skipped.
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelyard.training import scoring

Kind = Literal["choice", "number", "short", "code"]
KINDS: tuple[Kind, ...] = ("choice", "number", "short", "code")
LETTERS = "ABCDEFGHIJ"
CHOICE_INSTRUCTION = "Answer with the letter of the correct option only."
NUMBER_INSTRUCTION = "Solve it step by step, then write the final answer as a number on the last line."
SHORT_INSTRUCTION = "Answer with a short phrase only (a name, a date, a number), no explanation."
CODE_INSTRUCTION = "Reply with the complete Python code in one ```python code block."
NUMBER_TASKS = ("gsm8k", "agentverse-mgsm")
SHORT_TASKS = ("natural_qa", "trivia_qa")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_INTEGER_OR_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")
_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Question:
    """One question: what the model is asked and the answer that scores 1."""

    task: str
    kind: Kind
    prompt: str
    answer: str  # a letter, a number written without separators, a reference phrase, or (code) the tests
    setup: str = ""  # code: what runs before the answer's code (HumanEval's signature and docstring)


def load_questions(path: Path) -> list[Question]:
    """Every machine-checkable question in an LLMRouter-style JSONL file, in file order."""
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: prompts hold U+2028
        if line.strip():
            question = _question(json.loads(line))
            if question is not None:
                out.append(question)
    return out


def sample(questions: list[Question], per_task: int | dict[str, int], seed: int) -> list[Question]:
    """Up to ``per_task`` questions of each task (a count, or one per task: a task not named gets none),
    drawn with a fixed seed (the same call, the same sample)."""
    by_task: dict[str, list[Question]] = {}
    for q in questions:
        by_task.setdefault(q.task, []).append(q)
    rng = random.Random(seed)
    chosen = []
    for task in sorted(by_task):
        pool = by_task[task]
        wanted = per_task if isinstance(per_task, int) else per_task.get(task, 0)
        chosen += rng.sample(pool, min(wanted, len(pool)))
    rng.shuffle(chosen)
    return chosen


def score(question: Question, answer: str) -> float:
    """The answer's score in 0..1 (1 = right; F1 for short answers; code runs in the sandbox)."""
    if question.kind == "choice":
        return scoring.choice_score(answer, question.answer)
    if question.kind == "number":
        return scoring.number_score(answer, question.answer)
    if question.kind == "short":
        return scoring.f1_score(answer, question.answer)
    return scoring.code_score(answer, question.setup, question.answer)


def _question(row: dict[str, Any]) -> Question | None:
    task, metric = str(row.get("task_name", "")), str(row.get("metric", ""))
    query = str(row.get("query", "")).strip()
    truth = str(row.get("ground_truth", ""))
    if metric == "em_mc":
        return _choice_question(task, query, truth, row.get("choices"))
    if task in NUMBER_TASKS or task == "math":
        return _number_question(task, query, truth)
    if task in SHORT_TASKS and truth.strip():
        mark = "" if query.endswith("?") else "?"  # Natural Questions are written without one
        return Question(task, "short", f"{query}{mark}\n\n{SHORT_INSTRUCTION}", truth.strip())
    if task == "mbpp":
        tests = _options(row.get("choices"))
        if not tests:
            return None
        listed = "\n".join(tests)
        return Question(task, "code", f"{query}\nYour code should pass these tests:\n{listed}\n\n{CODE_INSTRUCTION}", listed)
    if task == "human_eval":
        names = _DEF.findall(str(row.get("query", "")))
        if not names or "def check(" not in truth:
            return None
        code = str(row.get("query", ""))
        prompt = f"Complete this Python function.\n\n```python\n{code.strip()}\n```\n\n{CODE_INSTRUCTION}"
        return Question(task, "code", prompt, f"{truth}\ncheck({names[-1]})\n", setup=code)
    return None


def _choice_question(task: str, query: str, truth: str, choices: object) -> Question | None:
    options = _options(choices)
    answer = truth.strip().upper()
    if not options or answer not in LETTERS[: len(options)]:
        return None
    lines = "\n".join(f"{label}. {text}" for label, text in zip(LETTERS, options, strict=False))
    return Question(task, "choice", f"{query}\n\n{lines}\n\n{CHOICE_INSTRUCTION}", answer)


def _number_question(task: str, query: str, truth: str) -> Question | None:
    """GSM8K/MGSM: the number after ``####`` (or the last one); MATH: a boxed answer that is a plain number."""
    if task == "math":
        boxed = _BOXED.findall(truth)
        value = boxed[-1].replace(",", "").strip() if boxed else ""
        if not _INTEGER_OR_DECIMAL.fullmatch(value):
            return None  # a symbolic answer (a fraction, an expression): not checkable by comparison
        return Question(task, "number", f"{query}\n\n{NUMBER_INSTRUCTION}", value)
    numbers = _NUMBER.findall(truth.split("####")[-1])
    if not numbers:
        return None
    return Question(task, "number", f"{query}\n\n{NUMBER_INSTRUCTION}", numbers[-1].replace(",", ""))


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
