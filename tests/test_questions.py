"""Checkable questions: the prompt built from the published row, and the answer's score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.training.commands import parse_per_task
from modelyard.training.questions import CHOICE_INSTRUCTION, CODE_INSTRUCTION, SHORT_INSTRUCTION, Question, load_questions, sample, score
from modelyard.training.scoring import f1_score

ROWS = [
    {"task_name": "arc_challenge", "query": "Which is a metal?", "ground_truth": "B", "metric": "em_mc", "choices": "{'text': ['wood', 'iron'], 'label': ['A', 'B']}"},
    {"task_name": "mmlu", "query": "2+2?", "ground_truth": "C", "metric": "em_mc", "choices": "['1', '3', '4', '5']"},
    {"task_name": "gsm8k", "query": "Add 1200 and 34.", "ground_truth": "1200+34=1234\n#### 1,234", "metric": "GSM8K", "choices": "None"},
    {"task_name": "natural_qa", "query": "who wrote hamlet", "ground_truth": "William Shakespeare", "metric": "f1_score", "choices": "None"},
    {"task_name": "mmlu", "query": "bad", "ground_truth": "E", "metric": "em_mc", "choices": "['1', '2']"},
    {"task_name": "mbpp", "query": "Write a function to add two numbers.", "ground_truth": "", "metric": "code_eval", "choices": "['assert add(1, 2) == 3', 'assert add(0, 0) == 0']"},
    {"task_name": "human_eval", "query": "def inc(x: int) -> int:\n    \"\"\"Add one.\"\"\"\n", "ground_truth": "def check(candidate):\n    assert candidate(1) == 2\n", "metric": "code_eval", "choices": "None"},
    {"task_name": "math", "query": "What is 6 times 7?", "ground_truth": "So it is $\\boxed{42}$.", "metric": "MATH", "choices": "None"},
    {"task_name": "math", "query": "Simplify.", "ground_truth": "$\\boxed{\\frac{1}{2}}$", "metric": "MATH", "choices": "None"},
    {"task_name": "commongen", "query": "dog, run", "ground_truth": "dog, run", "metric": "commongen_coverage", "choices": "None"},
]


def test_load_keeps_checkable_questions_only(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    questions = load_questions(path)
    # no judge-only task (CommonGen), no answer outside the options, no symbolic MATH answer
    assert [(q.task, q.kind) for q in questions] == [("arc_challenge", "choice"), ("mmlu", "choice"), ("gsm8k", "number"), ("natural_qa", "short"),
                                                     ("mbpp", "code"), ("human_eval", "code"), ("math", "number")]
    assert questions[0].prompt == f"Which is a metal?\n\nA. wood\nB. iron\n\n{CHOICE_INSTRUCTION}"
    assert (questions[1].answer, questions[2].answer, questions[6].answer) == ("C", "1234", "42")
    assert questions[3].prompt == f"who wrote hamlet?\n\n{SHORT_INSTRUCTION}" and questions[3].answer == "William Shakespeare"
    mbpp, human_eval = questions[4], questions[5]
    assert "assert add(1, 2) == 3" in mbpp.prompt and mbpp.prompt.endswith(CODE_INSTRUCTION)
    assert human_eval.setup.startswith("def inc") and human_eval.answer.endswith("check(inc)\n")


def test_scoring() -> None:
    choice = Question("mmlu", "choice", "", "C")
    assert score(choice, "C") == score(choice, " C. 4") == score(choice, "The answer is C") == 1.0
    assert score(choice, "A") == score(choice, "") == score(choice, "Certainly") == 0.0
    number = Question("gsm8k", "number", "", "1234")
    assert score(number, "1200 + 34 = 1,234\nSo the answer is 1234.") == 1.0
    assert score(number, "It is $1,234") == 1.0
    assert score(number, "1234 minus 1 is 1233") == 0.0  # the last number counts
    assert score(number, "no idea") == 0.0
    assert score(Question("math", "number", "", "42"), "6 x 7 = 42, so \\boxed{42}. Check: 43 is wrong.") == 1.0  # the box wins
    short = Question("natural_qa", "short", "", "William Shakespeare")
    assert score(short, "William Shakespeare") == 1.0 and score(short, "Shakespeare") == pytest.approx(2 / 3)
    assert score(short, "Marlowe") == 0.0 and score(short, "The Shakespeare.\nMore text") == pytest.approx(2 / 3)
    assert f1_score("the Beatles!", "Beatles") == 1.0  # articles and punctuation are not words
    code = Question("mbpp", "code", "", "assert add(1, 2) == 3")
    assert score(code, "```python\ndef add(a, b):\n    return a + b\n```") == 1.0
    assert score(code, "```python\ndef add(a, b):\n    return a * b\n```") == 0.0
    body = Question("human_eval", "code", "", "def check(candidate):\n    assert candidate(1) == 2\ncheck(inc)\n", setup="def inc(x):\n    \"\"\"Add one.\"\"\"\n")
    assert score(body, "    return x + 1") == 1.0  # the body alone completes the given signature
    assert score(body, "```python\ndef inc(x):\n    return x + 1\n```") == 1.0  # the whole function redefines it


def test_per_task_counts() -> None:
    assert parse_per_task("60") == 60
    assert parse_per_task("mbpp=50,gsm8k=4") == {"mbpp": 50, "gsm8k": 4}
    with pytest.raises(ValueError):
        parse_per_task("mbpp=many")
    questions = [Question(t, "choice", f"{t}{i}", "A") for t in ("a", "b") for i in range(10)]
    assert sorted(q.task for q in sample(questions, {"a": 3}, seed=0)) == ["a"] * 3  # a task not named gets none


def test_sample_is_stratified_and_repeatable() -> None:
    questions = [Question(t, "choice", f"{t}{i}", "A") for t in ("a", "b") for i in range(10)]
    first, again = sample(questions, 3, seed=1), sample(questions, 3, seed=1)
    assert first == again and len(first) == 6 and {q.task for q in first} == {"a", "b"}
