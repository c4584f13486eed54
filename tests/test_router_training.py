"""Train and evaluate the learned router on small slices of the shared public tables, as published."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.pipeline import router_file
from modelyard.training.questions import load_questions, score

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
    # The default learner has a word view, so train measured its band and eval says what share the words settle.
    words = report["words_first"]
    assert 0 <= words["settled"] <= 200 and words["settled_share"] == words["settled"] / 200 and words["differing_picks"] <= words["settled"]
    run("train", "--data", str(train), "--out", str(tmp_path / "no-band.npz"), "--band-folds", "0", *cache)
    plain = json.loads(run("eval", "--router", str(tmp_path / "no-band.npz"), "--data", str(train), "--json", *cache).stdout.splitlines()[-1])
    assert "words_first" not in plain
    cv = json.loads(run("cv", "--data", str(train), "--folds", "4", "--json", *cache).stdout.splitlines()[-1])
    assert cv["cross_validation_folds"] == 4 and cv["n"] == 200


def test_a_router_trained_on_a_cut_encoder_says_so_and_is_evaluated_on_it(tmp_path: Path) -> None:
    train = slice_csv(DATA / "routerbench_mbpp_train.csv", tmp_path / "mbpp_train.csv", 60)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    run("train", "--data", str(train), "--out", str(tmp_path / "r.npz"), "--embedding-runtime", "onnx-int8", "--embedding-layers", "3", *cache)
    assert router_file.load(tmp_path / "r.npz")[1]["embedding_layers"] == 3
    run("eval", "--router", str(tmp_path / "r.npz"), "--data", str(train), "--json", *cache)  # the file's depth, unless told
    assert ["-3layers-" in p.name for p in (tmp_path / "cache").glob("*.npy")] == [True]  # one set of vectors, from the cut
    refused = subprocess.run([sys.executable, "-m", "modelyard.cli", "router", "train", "--data", str(train), "--out", str(tmp_path / "x.npz"),
                              "--embedding-layers", "3", *cache], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "needs --embedding-runtime onnx-int8" in refused.stderr and "Traceback" not in refused.stderr


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
    """Real llama.cpp answers to a letter, a short answer and a code task (run in the sandbox), scored, resumable, then trained on."""
    out = tmp_path / "outcomes.jsonl"
    ask = ("collect", "--questions", str(DATA / "llmrouter_questions_train.jsonl"), "--models", "smollm2-135m,qwen2.5-0.5b",
           "--per-task", "arc_challenge=2,trivia_qa=2,mbpp=1", "--concurrency", "2", "--out", str(out))
    run(*ask)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and {(r["task"], r["kind"]) for r in rows} == {("arc_challenge", "choice"), ("trivia_qa", "short"), ("mbpp", "code")}
    questions = {q.prompt: q for q in load_questions(DATA / "llmrouter_questions_train.jsonl") if q.task in ("arc_challenge", "trivia_qa", "mbpp")}
    for row in rows:
        assert set(row["scores"]) == set(row["costs"]) == set(row["mean_logprob"]) == {"smollm2-135m", "qwen2.5-0.5b"}
        assert all(0.0 <= s <= 1.0 for s in row["scores"].values())
        assert all(cost > 0 for cost in row["costs"].values())  # busy seconds x the deployment's price
        assert all(lp is not None and lp <= 0.0 for lp in row["mean_logprob"].values())  # llama-server's token log-probabilities
        assert all(t > 0 for t in row["tokens"].values())
        for model, text in row["outputs"].items():  # the recorded score is the scorer's verdict on the recorded answer
            assert row["scores"][model] == round(score(questions[row["prompt"]], text), 4)
    # a second run asks nothing again: the file already answers every question
    again = run(*ask)
    assert "asked 0 questions" in again.stdout and len(out.read_text().splitlines()) == 5
    run("train", "--data", str(out), "--out", str(tmp_path / "local.npz"), "--cache-dir", str(tmp_path / "cache"), "--learner", "knn+logistic+task")
    report = json.loads(run("eval", "--router", str(tmp_path / "local.npz"), "--data", str(out), "--json", "--group-by", "task",
                            "--cache-dir", str(tmp_path / "cache")).stdout.splitlines()[-1])
    assert report["n"] == 5 and report["models"] == ["smollm2-135m", "qwen2.5-0.5b"] and "apgr" in report
    assert set(report["by_task"]) == {"arc_challenge", "trivia_qa", "mbpp"}


def test_outcome_tables_match_a_router_by_model_name() -> None:
    import numpy as np

    from modelyard.training.datasets import OutcomeTable

    table = OutcomeTable(["p"], ("a", "b", "c"), np.array([[0.1, 0.2, 0.3]]), np.array([[1.0, 2.0, 3.0]]), "t")
    same = table.for_models(("c", "a", "b"))  # another order: the columns follow the router's
    assert same.models == ("c", "a", "b") and same.quality.tolist() == [[0.3, 0.1, 0.2]] and same.cost.tolist() == [[3.0, 1.0, 2.0]]
    assert table.for_models(("b",)).quality.tolist() == [[0.2]]  # extra data columns are left out
    with pytest.raises(ValueError, match="no column for d, e"):
        table.for_models(("a", "d", "e"))
