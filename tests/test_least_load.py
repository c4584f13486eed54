"""Load-aware picking: the engine's own published load decides, including traffic modelyard never sent."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
from pathlib import Path

import httpx

from modelyard.backends.engine_metrics import parse_engine_load
from modelyard.routing.balancer import DeploymentView, EngineLoad, choose, load_key

from .conftest import start_fake_upstream, start_modelyard, wait_until, write_config

VLLM_PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 7.0
vllm:num_requests_running{engine="1",model_name="llama"} 1.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.61
vllm:prompt_tokens_total{model_name="llama"} 12345.0
"""
LLAMA_SERVER_PAGE = """# HELP llamacpp:requests_processing Number of requests processing
llamacpp:requests_processing 2
llamacpp:requests_deferred 5
llamacpp:prompt_tokens_total 32
"""


def test_metrics_pages_of_each_engine_map_to_one_shape() -> None:
    assert parse_engine_load(VLLM_PAGE) == {"running": 8.0, "waiting": 3.0, "kv_usage": 0.61}
    assert parse_engine_load(LLAMA_SERVER_PAGE) == {"running": 2.0, "waiting": 5.0, "kv_usage": 0.0}
    assert parse_engine_load("sglang:num_running_reqs 4\nsglang:num_queue_reqs 0\nsglang:token_usage 0.9\n") == {
        "running": 4.0, "waiting": 0.0, "kv_usage": 0.9}
    assert parse_engine_load("# nothing\nprocess_cpu_seconds_total 3.5\n") is None
    assert parse_engine_load("vllm:num_requests_waiting NaN\n") is None


def test_least_load_prefers_the_shorter_engine_queue_then_kv_then_running() -> None:
    rng = random.Random(0)
    queued = DeploymentView("a", outstanding=0, engine=EngineLoad(running=1, waiting=4, kv_usage=0.1))
    busy = DeploymentView("b", outstanding=0, engine=EngineLoad(running=9, waiting=0, kv_usage=0.95))
    roomy = DeploymentView("c", outstanding=3, engine=EngineLoad(running=9, waiting=0, kv_usage=0.30))
    assert choose("least_load", [queued, busy, roomy], rng) == "c"
    assert choose("least_load", [queued, busy], rng) == "b"  # a queue beats a full cache
    # modelyard's own in-flight count covers what it sent since the last reading.
    assert load_key(DeploymentView("d", outstanding=5, engine=EngineLoad(running=2))) == (0.0, 0.0, 5.0)
    # Without a published load, only modelyard's count is known.
    unknown = DeploymentView("e", outstanding=2)
    assert choose("least_load", [unknown, DeploymentView("f", outstanding=1)], rng) == "f"
    # least_outstanding would not see the outside traffic at all.
    assert choose("least_outstanding", [queued, roomy], rng) == "a"


def test_least_load_routes_away_from_an_engine_busy_with_other_clients(tmp_path: Path) -> None:
    busy = start_fake_upstream(tmp_path, "--capacity", "1", "--latency-ms", "20000")
    idle = start_fake_upstream(tmp_path)
    config = write_config(tmp_path / "fleet.yaml", f"""
models:
  m:
    strategy: least_load
    deployments:
      - {{name: busy, backend: openai, base_url: "{busy.url}/v1", upstream_model: fake}}
      - {{name: idle, backend: openai, base_url: "{idle.url}/v1", upstream_model: fake}}
""")
    gateway = start_modelyard(tmp_path, config)
    outside: list[threading.Thread] = []
    try:
        # Another client of the shared engine (not modelyard) fills it: 1 running, 2 waiting.
        for _ in range(3):
            body = {"model": "fake", "messages": [{"role": "user", "content": "x"}]}
            t = threading.Thread(target=_post_ignoring_errors, args=(busy.url + "/v1/chat/completions", body), daemon=True)
            t.start()
            outside.append(t)

        def seen_busy() -> bool:
            load = httpx.get(gateway.url + "/admin/fleet").json()["engine_load"]
            return load.get("m/busy", {}).get("waiting", 0) >= 2

        wait_until(seen_busy, "the gateway has read the busy engine's queue")
        served = []
        for _ in range(6):
            response = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
            assert response.status_code == 200, response.text
            served.append(response.headers["x-modelyard-deployment"])
        assert served == ["m/idle"] * 6
    finally:
        gateway.stop()
        busy.stop(signal.SIGKILL)  # its outside requests would hold it for 20 s
        idle.stop()


def _post_ignoring_errors(url: str, body: dict[str, object]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=60)
