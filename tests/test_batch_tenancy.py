"""Batch lines run as the key that submitted them: its allowed models, limits, budget and ledger.

Real modelyard processes over real HTTP with the official SDK; the upstream is the fake
OpenAI-compatible server (a real HTTP server) so prices and token counts are exact.
"""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import LiveServer, start_modelyard, write_config

MASTER = "sk-master-batch"
# priced: 4 completion tokens x $750 per 1M = $0.003 a line, prompt free; worst case == actual,
# so a $0.01 budget affords exactly 3 lines whatever order and concurrency they run in.
FLEET = """
scheduling:
  batch_concurrency: 4
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake}}
  priced:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake, price: {{input_per_1m: 0, output_per_1m: 750}}}}
"""
PER_LINE = 4 * 750 / 1_000_000


def serve(tmp: Path, fake: LiveServer) -> LiveServer:
    config = write_config(tmp / "fleet.yaml", FLEET.format(url=fake.url))
    return start_modelyard(tmp, config, ["--data-dir", str(tmp / "data")], env={"MODELYARD_MASTER_KEY": MASTER})


def admin(server: LiveServer, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {MASTER}"}
    return httpx.get(server.url + path, headers=headers) if body is None else httpx.post(server.url + path, json=body, headers=headers)


def new_key(server: LiveServer, tenant: str, **policy: Any) -> dict[str, Any]:
    assert admin(server, "/admin/tenants", {"id": tenant}).status_code == 201
    created = admin(server, "/admin/keys", {"tenant": tenant, **policy})
    assert created.status_code == 201, created.text
    return dict(created.json())


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}


def run_batch(client: openai.OpenAI, bodies: dict[str, dict[str, Any]], timeout: float = 60) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Submit one chat batch and wait for it to end: (batch, output lines by custom_id, error lines by custom_id)."""
    text = "\n".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": b}) for cid, b in bodies.items())
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(text.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)

    def lines(file_id: str | None) -> dict[str, Any]:
        if file_id is None:
            return {}
        return {e["custom_id"]: e for e in map(json.loads, client.files.content(file_id).text.splitlines())}

    return batch, lines(batch.output_file_id), lines(batch.error_file_id)


def usage_rows(server: LiveServer, tenant: str) -> list[dict[str, Any]]:
    rows = admin(server, "/admin/usage?group_by=tenant,workload,served_model").json()["data"]
    return [r for r in rows if r["tenant"] == tenant]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    live = serve(tmp_path_factory.mktemp("batch-tenancy"), fake_upstream)
    yield live
    live.stop()


def test_a_line_for_a_model_the_key_may_not_use_fails_as_the_live_api_does(server: LiveServer) -> None:
    key = new_key(server, "narrow", allowed_models=["fake-chat"])["key"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    live = httpx.post(server.url + "/v1/chat/completions", json=chat_body("priced"), headers={"Authorization": f"Bearer {key}"})
    assert live.status_code == 403
    batch, output, errors = run_batch(client, {"allowed": chat_body("fake-chat"), "forbidden": chat_body("priced")})
    assert batch.status == "completed" and set(output) == {"allowed"} and set(errors) == {"forbidden"}
    refused = errors["forbidden"]["response"]
    assert refused["status_code"] == 403 and refused["body"] == live.json()  # the same error, word for word
    batch_rows = [r for r in usage_rows(server, "narrow") if r["workload"] == "batch"]
    assert sum(r["requests"] for r in batch_rows) == 2 and sum(r["errors"] for r in batch_rows) == 1


def test_batch_spend_is_held_to_the_budget_ledgered_and_reloaded_after_sigkill(tmp_path: Path, fake_upstream: LiveServer) -> None:
    live = serve(tmp_path, fake_upstream)
    try:
        assert admin(live, "/admin/tenants", {"id": "frugal"}).status_code == 201
        assert admin(live, "/admin/tenants/frugal/budget", {"total": 0.01}).status_code == 200
        key = admin(live, "/admin/keys", {"tenant": "frugal"}).json()["key"]
        client = openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0)
        batch, output, errors = run_batch(client, {f"line-{i}": chat_body("priced") for i in range(7)})
        assert batch.status == "completed"
        assert len(output) == 3 and len(errors) == 4  # exactly what $0.01 affords at $0.003 a line
        for entry in errors.values():
            assert entry["response"]["status_code"] == 429
            assert entry["response"]["body"]["error"]["type"] == "insufficient_quota"
        rows = usage_rows(live, "frugal")
        assert {r["workload"] for r in rows} == {"batch"}
        assert sum(r["requests"] - r["errors"] for r in rows) == 3  # one row per answered line
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(3 * PER_LINE) and sum(r["cost_usd"] for r in rows) <= 0.01
        live.stop(signal.SIGKILL)
        live = serve(tmp_path, fake_upstream)
        refused = httpx.post(live.url + "/v1/chat/completions", json=chat_body("priced"), headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "insufficient_quota"  # the batch spend came back from the ledger
        metrics = httpx.get(live.url + "/metrics").text
        left = next(x for x in metrics.splitlines() if x.startswith('modelyard_budget_remaining_usd{period="total",tenant="frugal"}'))
        assert float(left.split()[-1]) == pytest.approx(0.01 - 3 * PER_LINE)
    finally:
        live.stop()
