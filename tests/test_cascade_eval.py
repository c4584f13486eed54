"""Cascades replayed from recorded answers: escalation rule, costs paid twice, checks a cascade can run without the truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from modelyard.training import cascade_eval
from modelyard.training.cascade_eval import Recorded, cascade_point, cascade_sweep, combined_sweep, passes_checks


def _recorded() -> Recorded:
    # cheap is right on rows 0 and 1 (sure of itself there), wrong on 2 and 3 (unsure); strong is right on 1, 2, 3
    scores = np.array([[1, 0], [1, 1], [0, 1], [0, 1]], dtype=float)
    costs = np.array([[1, 10]] * 4, dtype=float)
    confidence = np.array([[-0.1, -0.2], [-0.2, -0.1], [-1.5, -0.1], [-2.0, -0.3]])
    passed = np.array([[True, True], [True, True], [True, True], [False, True]])
    return Recorded(("cheap", "strong"), ["a", "b", "c", "d"], ("t",) * 4, scores, costs, confidence, passed)


def test_escalation_on_low_confidence_or_a_failed_check_pays_for_both_answers() -> None:
    rec = _recorded()
    cost, quality, share = cascade_point(rec, 0, 1, -math.inf)  # confidence never escalates; row 3 fails its check
    assert (cost, quality, share) == (pytest.approx((4 + 10) / 4), pytest.approx(3 / 4), 0.25)
    cost, quality, share = cascade_point(rec, 0, 1, -1.0)  # rows 2 and 3 are unsure
    assert (cost, quality, share) == (pytest.approx((4 + 20) / 4), 1.0, 0.5)
    cost, quality, share = cascade_point(rec, 0, 1, math.inf)  # everything escalates: strong's quality at both prices
    assert (cost, quality, share) == (pytest.approx(11.0), 0.75, 1.0)


def test_the_combined_policy_escalates_only_what_the_router_sent_to_the_cheap_model() -> None:
    rec = _recorded()
    first = np.array([0, 1, 0, 1])  # the router sent rows 1 and 3 to the strong model already
    cost, quality, share = cascade_point(rec, 0, 1, -1.0, first)
    assert share == 0.25 and quality == 1.0 and cost == pytest.approx((1 + 10 + 11 + 10) / 4)
    points = combined_sweep(rec, [first, np.zeros(4, dtype=np.int64)], 0, 1)
    assert (pytest.approx(8.0), 1.0) in [(c, q) for c, q in points]


def test_the_sweep_spans_never_to_always() -> None:
    sweep = cascade_sweep(_recorded(), 0, 1)
    assert sweep[0][0] == -math.inf and sweep[-1][0] == math.inf
    assert sweep[-1][3] == 1.0 and sweep[0][3] == 0.25  # the failed check escalates even at -inf


def test_checks_without_the_truth() -> None:
    assert passes_checks("choice", "B. iron", 3) and not passes_checks("choice", "Certainly! The answer", 5)
    assert not passes_checks("choice", "B", 8)  # cut off at the token limit
    assert passes_checks("number", "so 42", 10) and not passes_checks("number", "I do not know", 10)
    assert passes_checks("code", "```python\ndef f():\n    return 1\n```", 20)
    assert not passes_checks("code", "```python\ndef f(:\n```", 20)
    assert not passes_checks("short", "", 0) and passes_checks("short", "Paris", 2)


def test_load_recorded_reads_a_collect_file(tmp_path: Path) -> None:
    row = {"prompt": "p", "task": "mbpp", "kind": "code", "answer": "", "scores": {"a": 1.0, "b": 0.0}, "costs": {"a": 1e-6, "b": 2e-6},
           "tokens": {"a": 12, "b": 320}, "mean_logprob": {"a": -0.3, "b": None}, "outputs": {"a": "```python\nx = 1\n```", "b": "x ="}}
    path = tmp_path / "o.jsonl"
    path.write_text(json.dumps(row) + "\n")
    rec = cascade_eval.load_recorded(path)
    assert rec.models == ("a", "b") and rec.passed.tolist() == [[True, False]]
    assert rec.confidence[0, 0] == -0.3 and rec.confidence[0, 1] == -math.inf
    old = dict(row)
    del old["mean_logprob"]
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(ValueError, match="no recorded log-probabilities"):
        cascade_eval.load_recorded(path)
