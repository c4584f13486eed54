"""How an answer is scored, per kind of question, with no judge model.

- ``choice``: the first option letter in the answer's opening characters.
- ``number``: the last ``\\boxed{...}`` value, else the last number, equal to the truth.
- ``short``: SQuAD's token F1 against the reference (lower case, no punctuation
  or articles), in 0..1.
- ``code``: the answer's first fenced code block (or the whole answer) runs
  with the task's tests in the sandbox; 1 when every assert passes.
"""

from __future__ import annotations

import collections
import re
import string

from modelyard.training.sandbox import SandboxLimits, run_program

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"(?<![A-Za-z])([A-J])(?![A-Za-z])")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def choice_score(answer: str, truth: str) -> float:
    found = _LETTER.search(answer.strip()[:40])  # case kept: "a" is an article, "A" an option
    return float(found is not None and found.group(1) == truth)


def number_score(answer: str, truth: str) -> float:
    boxed = _BOXED.findall(answer)
    candidates = _NUMBER.findall((boxed[-1] if boxed else answer).replace("$", ""))
    return float(bool(candidates) and same_number(candidates[-1], truth))


def same_number(said: str, truth: str) -> bool:
    try:
        return abs(float(said.replace(",", "")) - float(truth.replace(",", ""))) < 1e-6
    except ValueError:
        return False


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def f1_score(answer: str, truth: str) -> float:
    """Token-overlap F1 of the answer's first line against the reference."""
    said = normalize_answer(answer.strip().split("\n", 1)[0]).split()
    wanted = normalize_answer(truth).split()
    if not said or not wanted:
        return float(said == wanted)
    common = sum((collections.Counter(said) & collections.Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(said), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def extract_code(answer: str) -> str:
    """The first fenced block (a Python one if any is marked so), else the answer itself."""
    blocks = _FENCE.findall(answer)
    for language, body in blocks:
        if language.lower() in ("python", "py", "python3"):
            return str(body)
    return str(blocks[0][1]) if blocks else answer


def code_score(answer: str, setup: str, checks: str, limits: SandboxLimits = SandboxLimits()) -> float:
    """1.0 when ``setup`` + the answer's code + ``checks`` runs to the end in the sandbox."""
    program = f"{setup}\n{extract_code(answer)}\n\n{checks}\n"
    return float(run_program(program, limits).passed)
