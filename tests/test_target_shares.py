"""A learned alias's quality target in the planner: where each target sends prompts, and what it costs at scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelyard.config import parse_config
from modelyard.planning.plan import PlanError
from modelyard.planning.traces import TraceRequest, to_jsonl
from modelyard.planning.whatif import load_target_shares, served_row
from modelyard.routing.learned import LearnedRouter
from modelyard.training import evaluate
from modelyard.training.datasets import OutcomeTable


def test_higher_targets_send_more_prompts_to_the_strong_model_and_score_what_was_recorded() -> None:
    # Prompt i: the cheap model's predicted quality falls with i, the strong one's stays 0.9.
    n = 10
    cheap = np.linspace(0.9, 0.0, n, dtype=np.float32)
    predicted = np.stack([cheap, np.full(n, 0.9, dtype=np.float32)], axis=1)
    quality = np.stack([(cheap > 0.45).astype(np.float64), np.ones(n)], axis=1)  # what the models really did
    table = OutcomeTable([f"p{i}" for i in range(n)], ("cheap", "strong"), quality, np.tile([1.0, 10.0], (n, 1)), "hand")
    router = LearnedRouter(("cheap", "strong"), np.array([1.0, 10.0], dtype=np.float32), np.zeros((n, 4), dtype=np.float32), quality.astype(np.float32))
    rows = evaluate.target_shares(table, router, predicted, (0.0, 0.5, 1.0))
    assert [r["target"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["shares"]["cheap"] for r in rows] == [1.0, 0.5, 0.1]  # predictions >= target x 0.9: all, the top half, the first
    assert rows[0]["quality"] == pytest.approx(0.5) and rows[1]["quality"] == pytest.approx(1.0) and rows[2]["quality"] == pytest.approx(1.0)
    assert rows[0]["cost_per_request"] == pytest.approx(1.0) and rows[1]["cost_per_request"] == pytest.approx(5.5)


FLEET = {
    "models": {
        "small": {"kind": "chat", "deployments": [{"name": "0", "backend": "llamacpp_server", "model_file": "builtin:smollm2-135m", "parallel": 2, "price": {"replica_hour": 1.0}}]},
        "big": {"kind": "chat", "deployments": [{"name": "0", "backend": "llamacpp_server", "model_file": "builtin:qwen2.5-coder-0.5b", "parallel": 2, "price": {"replica_hour": 4.0}}]},
    },
    "aliases": {"smart": {"targets": ["small", "big"], "strategy": "rule", "quality_target": 0.45}},  # planned at the nearest row: 0.5
}
SHARES = {"rows": [
    {"target": 0.0, "shares": {"small": 1.0, "big": 0.0}, "quality": 0.2, "cost_per_request": 1.0},
    {"target": 0.5, "shares": {"small": 0.5, "big": 0.5}, "quality": 0.5, "cost_per_request": 2.0},
    {"target": 1.0, "shares": {"small": 0.0, "big": 1.0}, "quality": 0.6, "cost_per_request": 4.0},
]}


def test_shares_files_are_checked_against_the_alias(tmp_path: Path) -> None:
    config = parse_config(FLEET)
    good = tmp_path / "shares.json"
    good.write_text(json.dumps(SHARES))
    alias, rows = load_target_shares(f"smart={good}", config)
    assert alias == "smart" and len(rows) == 3 and rows[0].shares == {"small": 1.0}  # zero shares dropped
    assert served_row(rows, 0.35).target == 0.5 and served_row(rows, 0.2).target == 0.0
    stranger = tmp_path / "other.json"
    stranger.write_text(json.dumps({"rows": [{"target": 0.5, "shares": {"gpt": 1.0}, "quality": 0.5}]}))
    with pytest.raises(PlanError, match="gpt: not among smart's targets"):
        load_target_shares(f"smart={stranger}", config)
    with pytest.raises(PlanError, match="an alias of the fleet"):
        load_target_shares(f"small={good}", config)
    with pytest.raises(PlanError, match="not a `modelyard router shares` file"):
        load_target_shares(f"smart={tmp_path / 'missing.json'}", config)


def test_plan_divides_the_alias_at_its_target_and_replans_every_target(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for deployment, speed in (("small__0", 1.0), ("big__0", 3.0)):
        (profiles / f"{deployment}.json").write_text(json.dumps({"prefill": {"fixed_s": 0.05 * speed, "per_token_s": 0.002 * speed},
                                                                 "decode_interval_s": {"1": 0.02 * speed, "2": 0.03 * speed}}))
    (tmp_path / "fleet.json").write_text(json.dumps(FLEET))
    (tmp_path / "shares.json").write_text(json.dumps(SHARES))
    trace = tmp_path / "t.jsonl"
    trace.write_text(to_jsonl([TraceRequest(i * 0.25, 100, 20, model="smart") for i in range(400)]))
    run = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "plan", "--trace", str(trace), "--config", str(tmp_path / "fleet.json"), "--profiles", str(profiles),
         "--target-shares", f"smart={tmp_path / 'shares.json'}", "--what-if", "target", "--slo", "p99_ttft_s=3", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "smart: planned at quality target 0.5" in run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["models"]["small"]["requests"] > 100 and summary["models"]["big"]["requests"] > 100  # half and half, as served
    rows = [r for r in summary["what_ifs"] if r["what_if"] == "quality target"]
    assert [r["expected_quality"] for r in rows] == [0.2, 0.5, 0.6]
    big = [r["replicas"]["big/0"] for r in rows]
    costs = [r["cost_usd"] for r in rows]
    assert big[0] < big[1] < big[2] and costs[0] < costs[1] < costs[2]  # quality bought with the strong model's replicas
    assert rows[1]["replicas"] == summary["replicas"]
