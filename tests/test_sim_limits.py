"""Tenants' rate limits in the simulator: the server's own limiter, live and simulated alike."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.config import load_config, parse_config
from modelyard.planning.engine_model import EngineModel
from modelyard.planning.plan import PlanError, parse_tenant_limit
from modelyard.planning.simulate import SimOptions, Simulation
from modelyard.planning.traces import TraceRequest, to_jsonl

from .conftest import LiveServer, start_modelyard, write_config

HOSTED = {"models": {"m": {"kind": "chat", "deployments": [{"name": "api", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}}}
FAST = {"m/api": EngineModel("independent", 0.1, 0.0, ((1, 0.001),))}


def test_a_limited_tenant_gets_its_rate_and_no_more_while_others_are_untouched() -> None:
    trace = [TraceRequest(i * 0.5, 20, 5, tenant="a" if i % 2 == 0 else "b", model="m") for i in range(480)]  # each tenant 1 request/s for 240 s
    records = Simulation(parse_config(HOSTED), FAST, SimOptions(tenant_limits={"a": (30, None)})).run(trace)
    a = [r for r in records if r.tenant == "a"]
    admitted = [r.arrival_s for r in a if r.status == 200]
    assert {r.status for r in a} == {200, 429} and all(r.status == 200 for r in records if r.tenant == "b")
    assert all(sum(1 for t in admitted if start <= t < start + 60) <= 30 for start in admitted)  # never more than 30 in any minute
    assert len(admitted) >= 30 * 3  # and the limit is reached in each of the four minutes but the last partial one


def test_tokens_per_minute_refuse_a_request_larger_than_the_whole_minute() -> None:
    trace = [TraceRequest(0.0, 20, 5, tenant="a", model="m"), TraceRequest(1.0, 20, 5_000, tenant="a", model="m"), TraceRequest(2.0, 20, 5, tenant="a", model="m")]
    statuses = [r.status for r in Simulation(parse_config(HOSTED), FAST, SimOptions(tenant_limits={"a": (None, 1_000)})).run(trace)]
    assert statuses == [200, 429, 200]


@pytest.mark.parametrize("text", ["a=10", "a=x,5", "=5,5", "a=-,-", "a=0,5"])
def test_bad_tenant_limits_are_named(text: str) -> None:
    with pytest.raises(PlanError, match="--tenant-limit"):
        parse_tenant_limit(text)
    assert parse_tenant_limit("acme=60,-") == ("acme", (60, None))


MASTER = "sk-master-limits"
FLEET = """
models:
  m:
    kind: chat
    deployments:
      - {{name: api, backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-latency-ms: '50'}}}}
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[tuple[LiveServer, Path, str]]:
    tmp = tmp_path_factory.mktemp("limits")
    config = write_config(tmp / "fleet.yaml", FLEET.format(url=fake_upstream.url))
    server = start_modelyard(tmp, config, ["--data-dir", str(tmp / "data")], env={"MODELYARD_MASTER_KEY": MASTER})
    admin = {"Authorization": f"Bearer {MASTER}"}
    assert httpx.post(server.url + "/admin/tenants", json={"id": "t", "rpm": 4}, headers=admin).status_code == 201
    key = httpx.post(server.url + "/admin/keys", json={"tenant": "t"}, headers=admin).json()["key"]
    yield server, config, key
    server.stop()


def test_live_server_and_simulator_refuse_the_same_requests(tmp_path: Path, limited: tuple[LiveServer, Path, str]) -> None:
    server, config_path, key = limited
    trace = [TraceRequest(i * 0.15, 12, 3, tenant="t", model="m") for i in range(10)]
    trace_file = tmp_path / "t.jsonl"
    trace_file.write_text(to_jsonl(trace))
    outcomes = tmp_path / "live.jsonl"
    run = subprocess.run([sys.executable, "-m", "modelyard.cli", "replay", "--trace", str(trace_file), "--base-url", server.url + "/v1", "--api-key", key,
                          "--no-calibrate", "--outcomes", str(outcomes)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    live = [json.loads(line)["status"] for line in outcomes.read_text().splitlines()]
    engine = EngineModel("independent", 0.05, 0.0, ((1, 0.001),))
    simulated = [r.status for r in Simulation(load_config(str(config_path)), {"m/api": engine}, SimOptions(tenant_limits={"t": (4, None)})).run(trace)]
    assert live == simulated == [200] * 4 + [429] * 6
