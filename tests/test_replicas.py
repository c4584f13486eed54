"""Two gateway replicas on one PostgreSQL: every piece of state shared, a batch job finished by the survivor.

Real modelyard processes over real HTTP; the upstream is the fake
OpenAI-compatible server with a fixed latency, so a job takes seconds and a
replica can be killed in the middle of it.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from .conftest import LiveServer, start_fake_upstream, start_modelyard, wait_until, write_config
from .services import DATABASE_ENV, REDIS_ENV, fresh_database, service_url

MASTER = "sk-master-replicas"
LINES = 40
CONCURRENCY = 2
FLEET = """
scheduling:
  batch_concurrency: {concurrency}
  batch_lease_s: 2
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake}}
"""


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database(service_url(DATABASE_ENV)) as url:
        yield url


@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_fake_upstream(tmp_path_factory.mktemp("slow-fake"), "--latency-ms", "250")
    yield live
    live.stop()


def replica(tmp: Path, name: str, upstream: LiveServer, database: str, fleet: str = FLEET, redis: bool = False) -> LiveServer:
    config = write_config(tmp / f"{name}.yaml", fleet.format(url=upstream.url, concurrency=CONCURRENCY))
    extra = ["--data-dir", str(tmp / name), "--database-url", database] + (["--redis-url", service_url(REDIS_ENV)] if redis else [])
    return start_modelyard(tmp, config, extra, env={"MODELYARD_MASTER_KEY": MASTER})


def admin(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {MASTER}"})


def ledger(database: str, sql: str) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database)
        try:
            return [dict(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_state_is_shared_and_a_killed_replicas_batch_lines_are_answered_once(
    tmp_path: Path, slow_upstream: LiveServer, database: str
) -> None:
    a, b = replica(tmp_path, "a", slow_upstream, database), replica(tmp_path, "b", slow_upstream, database)
    try:
        assert admin(a, "/admin/tenants", {"id": "acme"}).status_code == 201
        key = admin(a, "/admin/keys", {"tenant": "acme"}).json()["key"]
        via_a = openai.OpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0)
        via_b = openai.OpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0)
        # a key created on one replica opens the other once it reloads its keys (every few seconds)
        wait_until(lambda: httpx.get(b.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200, "b knows the key", 15)

        text = "\n".join(
            json.dumps({"custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "fake-chat", "messages": [{"role": "user", "content": f"q{n}"}], "max_tokens": 4}})
            for n in range(LINES)
        )
        uploaded = via_a.files.create(file=("in.jsonl", io.BytesIO(text.encode())), purpose="batch")
        assert via_b.files.content(uploaded.id).text == text, "a file uploaded to one replica is read from the other"
        batch = via_a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")

        def answered() -> int:
            counts = via_b.batches.retrieve(batch.id).request_counts
            return counts.completed if counts else 0

        wait_until(lambda: answered() >= 8, "both replicas answering lines", 30)
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL  # mid-job: its leased lines are lost with it
        assert answered() < LINES, "the job was not over when the replica died"
        deadline = time.monotonic() + 60
        while (done := via_b.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline and done.status in ("in_progress", "finalizing"), done.status
            time.sleep(0.2)
        assert done.output_file_id is not None and done.error_file_id is None
        outputs = [json.loads(line)["custom_id"] for line in via_b.files.content(done.output_file_id).text.splitlines()]
        assert sorted(outputs) == sorted(f"line-{n}" for n in range(LINES)), "every line answered exactly once"

        rows = ledger(database, "SELECT request_id FROM ledger WHERE workload = 'batch' AND tenant = 'acme'")
        upstream_calls = httpx.get(slow_upstream.url + "/stats").json()["requests"]
        assert len({r["request_id"] for r in rows}) == len(rows), "no ledger row twice"
        # Every answered line has its row; the killed replica's lines in flight reached the upstream and may have
        # written a row before it died without committing the line (then the survivor answered them again).
        assert LINES <= len(rows) <= upstream_calls <= LINES + CONCURRENCY, (len(rows), upstream_calls)
    finally:
        for server in (a, b):
            if server.process.poll() is None:
                server.stop()


BREAKER_FLEET = """
models:
  shared-upstream:
    kind: chat
    breaker: {{consecutive_failures: 2, min_requests: 1000, cooldown_s: 120}}
    retry: {{max_attempts: 1}}
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake}}
"""


def breaker_state(server: LiveServer) -> str:
    return str(httpx.get(server.url + "/admin/breakers", headers={"Authorization": f"Bearer {MASTER}"}).json()["shared-upstream/0"]["state"])


def test_an_upstream_failing_on_one_replica_opens_the_breaker_on_every_replica(tmp_path: Path, database: str) -> None:
    upstream = start_fake_upstream(tmp_path)
    a = replica(tmp_path, "a", upstream, database, BREAKER_FLEET, redis=True)
    b = replica(tmp_path, "b", upstream, database, BREAKER_FLEET, redis=True)
    try:
        httpx.post(upstream.url + "/fault", json={"mode": "status", "status": 500})
        body = {"model": "shared-upstream", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
        for _ in range(2):
            failed = httpx.post(a.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {MASTER}"})
            assert failed.status_code >= 500
        assert breaker_state(a) == "open"
        waited = wait_until(lambda: breaker_state(b) == "open", "b's breaker open", timeout=1.0)
        assert waited < 1.0
        refused = httpx.post(b.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {MASTER}"})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 100, refused.text
    finally:
        for server in (a, b, upstream):
            server.stop()
