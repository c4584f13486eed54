"""Hedged requests in the simulator: the dispatcher's hedge, live and simulated alike."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import load_config, parse_config
from modelyard.planning.engine_model import EngineModel
from modelyard.planning.simulate import SimOptions, Simulation
from modelyard.planning.traces import TraceRequest, to_jsonl

from .conftest import LiveServer, start_modelyard, write_config

SLOW_S, FAST_S, HEDGE_MS = 0.6, 0.05, 100


def hosted(hedge: bool) -> dict:  # type: ignore[type-arg]
    deployment = lambda n: {"name": n, "backend": "openai", "base_url": "http://127.0.0.1:9/v1", "price": {"input_per_1m": 1.0, "output_per_1m": 1.0}}  # noqa: E731
    model = {"kind": "chat", "deployments": [deployment("slow"), deployment("fast")]}
    return {"models": {"h": model | ({"hedge": {"enabled": True, "after_ms": HEDGE_MS}} if hedge else {})}}


ENGINES = {"h/slow": EngineModel("independent", SLOW_S, 0.0, ((1, 0.001),)), "h/fast": EngineModel("independent", FAST_S, 0.0, ((1, 0.001),))}


def test_a_late_first_token_sends_a_copy_that_wins_and_the_loser_is_paid_for() -> None:
    trace = [TraceRequest(i * 2.0, 10, 3, model="h") for i in range(3)]
    plain = Simulation(parse_config(hosted(False)), ENGINES, SimOptions()).run(trace)
    hedged = Simulation(parse_config(hosted(True)), ENGINES, SimOptions()).run(trace)
    assert [r.deployment for r in plain] == ["h/slow"] * 3 and all(r.ttft_s == pytest.approx(SLOW_S, abs=0.01) for r in plain)
    assert [r.deployment for r in hedged] == ["h/fast"] * 3 and [r.attempts for r in hedged] == [2] * 3
    assert all(r.ttft_s == pytest.approx(HEDGE_MS / 1000 + FAST_S, abs=0.01) for r in hedged)
    assert all(h.cost_usd > 0 for h in hedged)  # the winner's tokens, and the loser's time (priced per token: nothing) counted


def test_a_hedge_whose_copy_fails_waits_for_the_first_attempt() -> None:
    fleet = hosted(True)
    fleet["models"]["h"]["deployments"][1]["timeouts"] = {"first_token_s": 0.2}  # the copy's first token is due 0.2 s after it leaves
    engines = {"h/slow": ENGINES["h/slow"], "h/fast": EngineModel("independent", 1.0, 0.0, ((1, 0.001),))}  # ... and takes 1 s
    records = Simulation(parse_config(fleet), engines, SimOptions(gateway_overhead_s=0.0)).run([TraceRequest(0.0, 10, 3, model="h")])
    assert [(r.status, r.deployment, r.attempts) for r in records] == [(200, "h/slow", 2)]
    assert records[0].ttft_s == pytest.approx(SLOW_S, abs=0.01)  # the first attempt answered; the failed copy changed nothing


FLEET = """
models:
  h:
    kind: chat
    hedge: {{enabled: true, after_ms: {hedge}}}
    deployments:
      - {{name: slow, backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-latency-ms: '{slow}'}}}}
      - {{name: fast, backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-latency-ms: '{fast}'}}}}
  plain:
    kind: chat
    deployments:
      - {{name: slow, backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-latency-ms: '{slow}'}}}}
      - {{name: fast, backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-latency-ms: '{fast}'}}}}
"""


@pytest.fixture(scope="module")
def hedging(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[tuple[LiveServer, Path]]:
    tmp = tmp_path_factory.mktemp("hedging")
    config = write_config(tmp / "fleet.yaml", FLEET.format(url=fake_upstream.url, hedge=HEDGE_MS, slow=int(SLOW_S * 1000), fast=int(FAST_S * 1000)))
    server = start_modelyard(tmp, config)
    yield server, config
    server.stop()


def test_live_server_and_simulator_hedge_the_same_requests(tmp_path: Path, hedging: tuple[LiveServer, Path]) -> None:
    server, config_path = hedging
    trace = [TraceRequest(i * 1.5, 8, 2, model="h" if i % 2 == 0 else "plain") for i in range(6)]
    trace_file = tmp_path / "t.jsonl"
    trace_file.write_text(to_jsonl(trace))
    outcomes = tmp_path / "live.jsonl"
    run = subprocess.run([sys.executable, "-m", "modelyard.cli", "replay", "--trace", str(trace_file), "--base-url", server.url + "/v1", "--no-calibrate",
                          "--outcomes", str(outcomes)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    live = [json.loads(line) for line in outcomes.read_text().splitlines()]
    engines = {f"{m}/{d}": EngineModel("independent", s, 0.0, ((1, 0.001),)) for m in ("h", "plain") for d, s in (("slow", SLOW_S), ("fast", FAST_S))}
    simulated = Simulation(load_config(str(config_path)), engines, SimOptions()).run(trace)
    assert [r["deployment"] for r in live] == [r.deployment for r in simulated] == ["h/fast", "plain/slow"] * 3
    for real, sim in zip(live, simulated, strict=True):
        assert real["ttft_s"] == pytest.approx(sim.ttft_s, abs=0.12)
