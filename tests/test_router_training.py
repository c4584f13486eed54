"""Train and evaluate the learned router on small slices of the shared public tables, as published."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.training.questions import Question, score

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing"
pytestmark = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not beside this checkout")


def slice_csv(source: Path, target: Path, rows: int) -> Path:
    csv.field_size_limit(1 << 30)
    with source.open(encoding="utf-8", newline="") as f, target.open("w", encoding="utf-8", newline="") as out:
        reader, writer = csv.reader(f), csv.writer(out)
        for i, row in enumerate(reader):
            if i > rows:
                break
            writer.writerow(row)
    return target


def run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "modelyard.cli", "router", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_routerbench_round_trip(tmp_path: Path) -> None:
    train = slice_csv(DATA / "routerbench_mbpp_train.csv", tmp_path / "mbpp_train.csv", 200)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    run("train", "--data", str(train), "--out", str(tmp_path / "r.npz"), *cache)
    report = json.loads(run("eval", "--router", str(tmp_path / "r.npz"), "--data", str(train), "--json", *cache).stdout.splitlines()[-1])
    assert report["n"] == 200 and len(report["models"]) == 11
    assert report["oracle_quality"] >= report["best_single_quality"] >= report["baselines"]["random"]["quality"]
    assert report["oracle_cost"] <= report["best_single_cost"]
    assert 0 < report["aiq_router"] <= 1 and 0 < report["aiq_best_single"] <= 1
    # In-sample the neighbours include the prompt itself: the router must at least match the best single model.
    assert report["router_cost_at_best_single_quality"] is not None
    cv = json.loads(run("cv", "--data", str(train), "--folds", "4", "--json", *cache).stdout.splitlines()[-1])
    assert cv["cross_validation_folds"] == 4 and cv["n"] == 200


def test_routellm_two_model_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "mmlu"
    folder.mkdir()
    for name in ("mmlu_anatomy.csv", "mmlu_astronomy.csv"):
        (folder / name).write_bytes((DATA / "routellm_mmlu" / name).read_bytes())
    cache = ["--cache-dir", str(tmp_path / "cache")]
    plot = tmp_path / "curve.png"
    cv = json.loads(run("cv", "--data", str(folder), "--json", "--plot", str(plot), *cache).stdout.splitlines()[-1])
    assert cv["models"] == ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]
    assert 0.0 <= cv["apgr"] <= 1.0 and cv["cpt50"] is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(cv["router_share"].values()) == pytest.approx(1.0)
    # The fixed split by prompt hash: train and test are disjoint and cover the table.
    parts = [json.loads(run("cv", "--data", str(folder), "--split", part, "--folds", "3", "--json", *cache).stdout.splitlines()[-1])["n"] for part in ("train", "test")]
    assert sum(parts) == cv["n"] and 0.15 < parts[1] / cv["n"] < 0.35


def test_collect_then_train_on_the_local_fleet(tmp_path: Path) -> None:
    """Real llama.cpp answers on a few questions, scored, written as an outcome table that `router train` reads."""
    out = tmp_path / "outcomes.jsonl"
    run("collect", "--questions", str(DATA / "llmrouter_questions_train.jsonl"), "--models", "smollm2-135m,qwen2.5-0.5b",
        "--tasks", "commonsense_qa,openbook_qa,arc_challenge", "--per-task", "2", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["task"] for r in rows} == {"commonsense_qa", "openbook_qa", "arc_challenge"}
    for row in rows:
        assert set(row["scores"]) == set(row["costs"]) == {"smollm2-135m", "qwen2.5-0.5b"}
        assert all(score in (0.0, 1.0) for score in row["scores"].values())
        assert all(cost > 0 for cost in row["costs"].values())  # busy seconds x the deployment's price
        for model, text in row["outputs"].items():  # the recorded score is the scorer's verdict on the recorded answer
            assert row["scores"][model] == score(Question(row["task"], "choice", row["prompt"], row["answer"]), text)
    run("train", "--data", str(out), "--out", str(tmp_path / "local.npz"), "--cache-dir", str(tmp_path / "cache"))
    report = json.loads(run("eval", "--router", str(tmp_path / "local.npz"), "--data", str(out), "--json", "--cache-dir", str(tmp_path / "cache")).stdout.splitlines()[-1])
    assert report["n"] == 6 and report["models"] == ["smollm2-135m", "qwen2.5-0.5b"] and "apgr" in report


def test_outcome_tables_match_a_router_by_model_name() -> None:
    import numpy as np

    from modelyard.training.datasets import OutcomeTable

    table = OutcomeTable(["p"], ("a", "b", "c"), np.array([[0.1, 0.2, 0.3]]), np.array([[1.0, 2.0, 3.0]]), "t")
    same = table.for_models(("c", "a", "b"))  # another order: the columns follow the router's
    assert same.models == ("c", "a", "b") and same.quality.tolist() == [[0.3, 0.1, 0.2]] and same.cost.tolist() == [[3.0, 1.0, 2.0]]
    assert table.for_models(("b",)).quality.tolist() == [[0.2]]  # extra data columns are left out
    with pytest.raises(ValueError, match="no column for d, e"):
        table.for_models(("a", "d", "e"))
