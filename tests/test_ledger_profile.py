"""Remote deployments' speed fitted from the ledger: the fit, the simulator's draws, and the command on a live ledger."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelyard.config import parse_config
from modelyard.planning.engine_model import EngineModel, engine_from_profile
from modelyard.planning.ledger_profile import NotEnoughHistory, draw, fit_remote, quantiles
from modelyard.planning.simulate import SimOptions, Simulation
from modelyard.planning.traces import TraceRequest

from .conftest import LiveServer, start_modelyard, write_config


def rows(n: int, fixed_s: float, per_token_s: float, interval_s: float, spread: float, seed: int = 1) -> list[dict[str, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, completion = rng.randint(10, 2000), rng.randint(2, 200)
        ttft = (fixed_s + per_token_s * prompt) * rng.uniform(1 - spread, 1 + spread)
        upstream = ttft + (completion - 1) * interval_s * rng.uniform(1 - spread, 1 + spread)
        out.append({"prompt_tokens": prompt, "completion_tokens": completion, "ttft_ms": ttft * 1000, "upstream_ms": upstream * 1000})
    return out


def test_the_fit_recovers_the_line_the_interval_and_the_spread() -> None:
    profile = fit_remote(rows(2000, 0.3, 0.0002, 0.02, 0.2))
    assert profile["prefill"]["fixed_s"] == pytest.approx(0.3, rel=0.1)
    assert profile["prefill"]["per_token_s"] == pytest.approx(0.0002, rel=0.1)
    assert profile["decode_interval_s"]["1"] == pytest.approx(0.02, rel=0.05)
    ttft = profile["jitter"]["ttft"]
    assert len(ttft) == 21 and ttft == sorted(ttft)
    assert ttft[0] == pytest.approx(0.8, abs=0.05) and ttft[10] == pytest.approx(1.0, abs=0.05) and ttft[-1] == pytest.approx(1.2, abs=0.05)
    steady = fit_remote(rows(200, 0.3, 0.0, 0.02, 0.0))
    assert steady["jitter"]["ttft"][0] == pytest.approx(1.0, abs=0.01) and steady["jitter"]["ttft"][-1] == pytest.approx(1.0, abs=0.01)
    assert steady["prefill"]["per_token_s"] == pytest.approx(0.0, abs=1e-6)


def test_a_slow_tail_does_not_tilt_the_line() -> None:
    history = rows(1000, 0.3, 0.0001, 0.02, 0.1)
    for row in history[::20]:  # 5% of answers take 10x: the tail is the jitter's, not the line's
        row["ttft_ms"] *= 10
    profile = fit_remote(history)
    assert profile["prefill"]["fixed_s"] == pytest.approx(0.3, rel=0.15)
    assert profile["jitter"]["ttft"][-1] > 5


def test_too_little_history_is_refused() -> None:
    with pytest.raises(NotEnoughHistory, match="29 answered requests"):
        fit_remote(rows(29, 0.3, 0.0, 0.02, 0.1))


def test_quantiles_and_draws_interpolate() -> None:
    assert quantiles([3.0, 1.0, 2.0], 2) == [1.0, 2.0, 3.0]
    assert draw([1.0, 2.0, 4.0], 0.0) == 1.0 and draw([1.0, 2.0, 4.0], 0.75) == 3.0 and draw([], 0.3) == 1.0


HOSTED = {"models": {"m": {"kind": "chat", "deployments": [{"name": "api", "backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                            "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}}]}}}


def test_the_simulator_draws_each_hosted_request_from_the_fitted_spread() -> None:
    config = parse_config(HOSTED)
    trace = [TraceRequest(i * 1.0, 100, 20, model="m") for i in range(400)]
    fixed = EngineModel("independent", 0.5, 0.0, ((1, 0.01),))
    plain = Simulation(config, {"m/api": fixed}, SimOptions()).run(trace)
    assert len({round(r.ttft_s or 0, 6) for r in plain}) == 1
    profile = fit_remote(rows(500, 0.5, 0.0, 0.01, 0.5))
    fitted = engine_from_profile(profile, "independent")
    assert fitted.ttft_jitter and fitted.interval_jitter
    spread = sorted(r.ttft_s or 0 for r in Simulation(config, {"m/api": fitted}, SimOptions()).run(trace))
    assert spread[0] < 0.3 and spread[-1] > 0.7  # 0.5 s x the fitted 0.5-1.5 spread
    assert sum(spread) / len(spread) == pytest.approx(0.5, rel=0.1)


FLEET = """
models:
  m:
    kind: chat
    deployments:
      - {{name: api, backend: openai, base_url: '{url}/v1', upstream_model: fake,
          headers: {{x-fake-latency-ms: '120', x-fake-token-interval-ms: '15', x-fake-tokens: '8'}}}}
"""


def test_profile_from_ledger_fits_what_a_live_server_recorded(tmp_path: Path, fake_upstream: LiveServer) -> None:
    config = write_config(tmp_path / "fleet.yaml", FLEET.format(url=fake_upstream.url))
    data = tmp_path / "data"
    server = start_modelyard(tmp_path, config, extra=["--data-dir", str(data)])
    try:
        with httpx.Client(timeout=30) as http:
            for i in range(36):
                body = {"model": "m", "messages": [{"role": "user", "content": "word " * (10 + 40 * (i % 6))}], "stream": i % 2 == 0}
                assert http.post(f"{server.url}/v1/chat/completions", json=body).status_code == 200
    finally:
        server.stop()  # a graceful stop writes every ledger row
    out = tmp_path / "profiles"
    run = subprocess.run([sys.executable, "-m", "modelyard.cli", "profile", "--model", "m", "--config", str(config), "--data-dir", str(data),
                          "--from-ledger", "--out", str(out)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    profile = json.loads((out / "m__api.json").read_text())
    assert profile["source"] == "ledger" and profile["samples"] == 36
    assert profile["prefill"]["fixed_s"] == pytest.approx(0.12, abs=0.04)
    assert profile["decode_interval_s"]["1"] == pytest.approx(0.015, abs=0.006)
    engine = engine_from_profile(profile, "independent")  # the planner reads it as it reads a probed profile
    assert engine.prefill_s(100) == pytest.approx(0.12, abs=0.05)
    refused = subprocess.run([sys.executable, "-m", "modelyard.cli", "profile", "--model", "m", "--config", str(config), "--data-dir", str(data),
                              "--from-ledger", "--min-samples", "100", "--out", str(out)], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "36 answered requests (at least 100 needed)" in refused.stderr and "Traceback" not in refused.stderr
