"""Local engines on a real Ray cluster (``ray start --head`` on this machine, stopped afterwards).

SmolLM2 runs as a Ray Serve application (llama.cpp's server in each replica);
a modelyard gateway reaches it through Serve's HTTP proxy as an ordinary
``openai`` deployment. Serve scales it 1 → 2 → 1 with the load, and a replica
killed mid-load costs no request after the gateway's retry.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.backends.ray_commands import gateway_fleet

from .conftest import LiveServer, free_port, start_modelyard, wait_until, write_config

pytestmark = pytest.mark.ray
RAY = Path(sys.executable).parent / "ray"
MODELYARD = Path(sys.executable).parent / "modelyard"
ENV = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "OMP_WAIT_POLICY": "PASSIVE"}


def gateway_fleet_for(url: str) -> str:
    """What ``modelyard ray deploy`` prints for the engine, with the gateway's concurrency raised for the bursts below."""
    return gateway_fleet({"smollm2-135m": url}).replace("upstream_model: smollm2-135m}", "upstream_model: smollm2-135m, max_concurrency: 16}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    started = subprocess.run(
        [str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
         "--object-store-memory", "100000000", "--disable-usage-stats"],
        env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([str(RAY), "stop", "--force"], env=ENV, capture_output=True, timeout=120)


def ray_cli(*args: str, timeout: float = 180) -> str:
    done = subprocess.run([str(MODELYARD), "ray", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def deploy(address: str, http_port: int, *flags: str) -> str:
    printed = ray_cli("deploy", "--address", address, "--models", "smollm2-135m", "--http-port", str(http_port),
                      "--upscale-delay-s", "1", "--downscale-delay-s", "3", *flags)
    return str(printed.split("base_url: '")[1].split("'")[0])


def running(address: str) -> int:
    return int(json.loads(ray_cli("status", "--address", address)).get("smollm2-135m", {}).get("RUNNING", 0))


@pytest.fixture(scope="module")
def gateway(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("ray-gateway")
    url = deploy(cluster, free_port())
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", gateway_fleet_for(url)), ["--data-dir", str(tmp / "data")])
    yield live
    live.stop()


def outstanding(gateway: LiveServer) -> int:
    return sum(int(d["outstanding"]) for d in httpx.get(gateway.url + "/admin/fleet").json()["deployments"])


def ask(gateway: LiveServer, max_tokens: int = 8) -> httpx.Response:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me about cats."}], "max_tokens": max_tokens}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=300)


def burst(gateway: LiveServer, n: int, max_tokens: int) -> concurrent.futures.Future[list[int]]:
    pool = concurrent.futures.ThreadPoolExecutor(n + 1)

    def run() -> list[int]:
        with concurrent.futures.ThreadPoolExecutor(n) as inner:
            return [r.status_code for r in inner.map(lambda _: ask(gateway, max_tokens), range(n))]

    return pool.submit(run)


def test_a_serve_hosted_engine_answers_through_the_gateway_and_scales_with_load(gateway: LiveServer, cluster: str) -> None:
    answer = ask(gateway)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 8 and answer.json()["choices"][0]["message"]["content"]
    assert running(cluster) == 1
    load = burst(gateway, 8, 160)
    wait_until(lambda: running(cluster) == 2, "Serve scaled to 2 replicas", timeout=60, poll_s=1)
    assert load.result(timeout=300) == [200] * 8
    wait_until(lambda: running(cluster) == 1, "Serve scaled back to 1 replica", timeout=90, poll_s=1)


def test_a_killed_replica_costs_no_request_after_the_gateways_retry(gateway: LiveServer, cluster: str) -> None:
    deploy(cluster, 0, "--min-replicas", "2")  # the same application, now never below two replicas
    wait_until(lambda: running(cluster) == 2, "two replicas", timeout=90, poll_s=1)
    load = burst(gateway, 6, 96)
    wait_until(lambda: outstanding(gateway) >= 4, "requests in flight on the engines", timeout=30)
    killer = subprocess.run(
        [sys.executable, "-c", f"from modelyard.backends.ray_serve import kill_one_replica; print(kill_one_replica({cluster!r}, 'smollm2-135m'))"],
        env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert killer.returncode == 0 and "SERVE_REPLICA::smollm2-135m#" in killer.stdout, killer.stderr[-2000:]
    assert load.result(timeout=300) == [200] * 6
    wait_until(lambda: running(cluster) == 2, "Serve replaced the killed replica", timeout=90, poll_s=1)
