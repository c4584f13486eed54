"""Checkable questions: the prompt built from the published row, and the answer's score."""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.training.questions import CHOICE_INSTRUCTION, Question, load_questions, sample, score

ROWS = [
    {"task_name": "arc_challenge", "query": "Which is a metal?", "ground_truth": "B", "metric": "em_mc", "choices": "{'text': ['wood', 'iron'], 'label': ['A', 'B']}"},
    {"task_name": "mmlu", "query": "2+2?", "ground_truth": "C", "metric": "em_mc", "choices": "['1', '3', '4', '5']"},
    {"task_name": "gsm8k", "query": "Add 1200 and 34.", "ground_truth": "1200+34=1234\n#### 1,234", "metric": "GSM8K", "choices": "None"},
    {"task_name": "natural_qa", "query": "who?", "ground_truth": "x", "metric": "f1_score", "choices": "None"},
    {"task_name": "mmlu", "query": "bad", "ground_truth": "E", "metric": "em_mc", "choices": "['1', '2']"},
]


def test_load_keeps_checkable_questions_only(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    questions = load_questions(path)
    assert [q.task for q in questions] == ["arc_challenge", "mmlu", "gsm8k"]  # no judge-only task, no answer outside the options
    assert questions[0].prompt == f"Which is a metal?\n\nA. wood\nB. iron\n\n{CHOICE_INSTRUCTION}"
    assert (questions[1].answer, questions[2].answer) == ("C", "1234")


def test_scoring() -> None:
    choice = Question("mmlu", "choice", "", "C")
    assert score(choice, "C") == score(choice, " C. 4") == score(choice, "The answer is C") == 1.0
    assert score(choice, "A") == score(choice, "") == score(choice, "Certainly") == 0.0
    number = Question("gsm8k", "number", "", "1234")
    assert score(number, "1200 + 34 = 1,234\nSo the answer is 1234.") == 1.0
    assert score(number, "It is $1,234") == 1.0
    assert score(number, "1234 minus 1 is 1233") == 0.0  # the last number counts
    assert score(number, "no idea") == 0.0


def test_sample_is_stratified_and_repeatable() -> None:
    questions = [Question(t, "choice", f"{t}{i}", "A") for t in ("a", "b") for i in range(10)]
    first, again = sample(questions, 3, seed=1), sample(questions, 3, seed=1)
    assert first == again and len(first) == 6 and {q.task for q in first} == {"a", "b"}
