"""Rate limits in Redis, shared between replicas: the real Redis (this machine's or a private one, tests/services.py).

Unit tests drive the windows with two clients (two replicas); the live tests
run two modelyard servers on one data directory and one Redis (rate limits
and budgets; tests/test_shared_budgets.py has the budgets' unit tests).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.asyncio import Redis

from modelyard.pipeline.limits import SharedLimiter
from modelyard.store.redis_client import SharedStateUnavailable, connect_redis
from modelyard.store.redis_limits import RedisWindows, Window

from .conftest import LiveServer, free_port, start_modelyard, write_config
from .services import REDIS_ENV, service_url

REDIS_URL = service_url(REDIS_ENV)  # this machine's, or a private one (tests/services.py)


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[RedisWindows, RedisWindows]]:
    """Two clients on one Redis, as two replicas would have, under a prefix of their own."""
    prefix = f"modelyard-test:{uuid.uuid4().hex}"
    clients = [await connect_redis(REDIS_URL), await connect_redis(REDIS_URL)]
    yield RedisWindows(clients[0], window_s=1.0, prefix=prefix), RedisWindows(clients[1], window_s=1.0, prefix=prefix)
    keys = [k async for k in clients[0].scan_iter(f"{prefix}:*")]
    if keys:
        await clients[0].delete(*keys)
    for client in clients:
        await client.aclose()


async def test_two_replicas_never_take_more_than_the_limit_together(replicas: tuple[RedisWindows, RedisWindows]) -> None:
    a, b = replicas
    checks = [(a if i % 2 else b).check([Window("key:k1", "requests", 7, 1)]) for i in range(40)]
    results = await asyncio.gather(*checks)
    assert sum(r.taken is not None for r in results) == 7
    refused = next(r for r in results if r.taken is None)
    assert 0 < refused.retry_after_s <= 1.0
    assert refused.states[0][0] == 0  # nothing left before this request


async def test_tokens_are_reserved_then_settled_to_the_actual_count(replicas: tuple[RedisWindows, RedisWindows]) -> None:
    a, b = replicas
    first = await a.check([Window("key:k2", "tokens", 100, 60)])
    assert first.taken is not None and first.states == ((100.0, 0.0),)
    assert (await b.check([Window("key:k2", "tokens", 100, 60)])).taken is None  # 60 + 60 > 100
    await a.settle(first.taken, 10)  # the answer was short
    second = await b.check([Window("key:k2", "tokens", 100, 60)])
    assert second.taken is not None and second.states[0][0] == 90.0


async def test_every_scope_or_none_is_taken(replicas: tuple[RedisWindows, RedisWindows]) -> None:
    a, _ = replicas
    tenant_full = [Window("key:k3", "requests", 10, 1), Window("tenant:t3", "requests", 1, 1)]
    assert (await a.check(tenant_full)).taken is not None
    assert (await a.check(tenant_full)).taken is None
    only_key = await a.check([Window("key:k3", "requests", 10, 1)])
    assert only_key.states[0][0] == 9  # the refused request took nothing from the key's window


async def test_the_window_slides(replicas: tuple[RedisWindows, RedisWindows]) -> None:
    a, _ = replicas
    taken_at = time.monotonic()
    assert (await a.check([Window("key:k4", "requests", 1, 1)])).taken is not None
    assert (await a.check([Window("key:k4", "requests", 1, 1)])).taken is None
    while (await a.check([Window("key:k4", "requests", 1, 1)])).taken is None:  # the event: the 1 s window has slid past the request
        assert time.monotonic() - taken_at < 10, "the window never slid"
        await asyncio.sleep(0.02)
    assert time.monotonic() - taken_at >= 0.9  # and not before its second was up (Redis's clock, 0.1 s of skew allowed)


async def test_an_unreachable_redis_fails_startup_and_lets_requests_through_later(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(SharedStateUnavailable, match="cannot be reached"):
        await connect_redis(dead)
    client = Redis.from_url(dead, socket_connect_timeout=0.5)
    limiter = SharedLimiter(RedisWindows(client))
    with caplog.at_level(logging.WARNING, "modelyard.limits"):
        settle, retry_after, states = await limiter.check([("key:k5", 1, None)], 10)
    assert settle is not None and retry_after == 0.0 and states == {}
    assert "rate limits are not enforced" in caplog.text
    await client.aclose()


FLEET = """
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake}}
  priced:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake, price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
"""
MASTER = "sk-master-shared"


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[tuple[LiveServer, LiveServer, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("replicas")
    config = write_config(tmp / "fleet.yaml", FLEET.format(url=fake_upstream.url))
    args = ["--data-dir", str(tmp / "data"), "--redis-url", REDIS_URL]
    env = {"MODELYARD_MASTER_KEY": MASTER}
    first = start_modelyard(tmp, config, args, env=env)
    admin = {"Authorization": f"Bearer {MASTER}"}
    # Redis outlives test runs (and CI uses this machine's): tenants of this run's own.
    shared, frugal = f"shared-{uuid.uuid4().hex[:8]}", f"frugal-{uuid.uuid4().hex[:8]}"
    assert httpx.post(first.url + "/admin/tenants", json={"id": shared}, headers=admin).status_code == 201
    key = httpx.post(first.url + "/admin/keys", json={"tenant": shared, "rpm": 4}, headers=admin).json()["key"]
    assert httpx.post(first.url + "/admin/tenants", json={"id": frugal}, headers=admin).status_code == 201
    assert httpx.post(first.url + f"/admin/tenants/{frugal}/budget", json={"total": 0.05}, headers=admin).status_code == 200
    frugal_key = httpx.post(first.url + "/admin/keys", json={"tenant": frugal}, headers=admin).json()["key"]
    second = start_modelyard(tmp, config, args, env=env)  # reads the keys and budgets from the same store at startup
    yield first, second, {"limited": key, "frugal": frugal_key}
    first.stop()
    second.stop()
    client = redis.Redis.from_url(REDIS_URL)
    for tenant in (shared, frugal):
        for pattern in (f"modelyard:*:{tenant}:*", f"modelyard:*:tenant:{tenant}:*"):
            for stale in client.scan_iter(pattern):
                client.delete(stale)
    client.close()


def spread(servers: tuple[LiveServer, LiveServer], key: str, model: str, n: int) -> list[int]:
    """``n`` concurrent requests, alternating between the replicas; their statuses."""
    statuses: list[int] = []

    def one(server: LiveServer) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
        statuses.append(httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code)

    threads = [threading.Thread(target=one, args=(servers[i % 2],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_replicas_on_one_redis_share_a_keys_rate_limit(two_replicas: tuple[LiveServer, LiveServer, dict[str, str]]) -> None:
    first, second, keys = two_replicas
    statuses = spread((first, second), keys["limited"], "fake-chat", 10)
    assert statuses.count(200) == 4 and statuses.count(429) == 6  # each replica alone would have let 4 through


def test_replicas_on_one_redis_share_a_tenants_budget(two_replicas: tuple[LiveServer, LiveServer, dict[str, str]]) -> None:
    first, second, keys = two_replicas
    statuses = spread((first, second), keys["frugal"], "priced", 40)  # $0.009 each (1 prompt token, 4 completion tokens)
    assert statuses.count(200) == 5 and statuses.count(429) == 35  # 5 x 0.009 <= 0.05; each replica alone would have let 5 through


def test_serve_refuses_a_redis_it_cannot_reach(tmp_path: Path, fake_upstream: LiveServer) -> None:
    config = write_config(tmp_path / "fleet.yaml", FLEET.format(url=fake_upstream.url))
    dead = f"redis://127.0.0.1:{free_port()}/0"
    run = subprocess.run([sys.executable, "-m", "modelyard.cli", "serve", "--config", str(config), "--port", str(free_port()),
                          "--data-dir", str(tmp_path / "data"), "--redis-url", dead], capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert "cannot start" in run.stderr and "cannot be reached" in run.stderr and "Traceback" not in run.stderr
