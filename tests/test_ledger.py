"""The usage ledger: a row with tokens and cost for every request, nothing lost on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from modelyard.config import Price
from modelyard.economics.cost import AttemptUse, attempt_cost, request_cost
from modelyard.planning.traces import parse_trace
from modelyard.protocol import Usage

from .conftest import LiveServer, start_modelyard, write_config
from .services import DATABASE_ENV, fresh_database, service_url


def test_cost_arithmetic() -> None:
    api = Price(input_per_1m=2.0, output_per_1m=8.0)
    assert attempt_cost(api, Usage(1_000, 500), busy_s=3.0) == pytest.approx(0.002 + 0.004)
    local = Price(replica_hour=3.6)
    assert attempt_cost(local, Usage(10, 10), busy_s=2.0) == pytest.approx(0.002)  # $0.001 per replica-second
    attempts = [AttemptUse("a", None, 0.5), AttemptUse("b", Usage(1_000, 1_000), 1.0)]  # a failed try, then the answer
    prices = {"a": local, "b": api}
    assert request_cost(attempts, prices) == pytest.approx(0.0005 + 0.010)
    assert request_cost([AttemptUse("unpriced", Usage(5, 5), 9.0)], prices) == 0.0


FLEET = """
models:
  priced:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
  flaky:
    kind: chat
    deployments:
      - {{name: bad, backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '500'}}, price: {{replica_hour: 36}}}}
      - {{name: good, backend: openai, base_url: '{url}/v1', price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
  slow:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-token-interval-ms: '200'}}}}
"""


def chat(server: LiveServer, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 4} | extra
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)


POSTGRES = service_url(DATABASE_ENV)  # this machine's, or a private one (tests/services.py)


def ledger_rows(database: str, data: Path) -> dict[str, dict[str, object]]:
    if database == "sqlite":
        db = sqlite3.connect(data / "modelyard.db")
        db.row_factory = sqlite3.Row
        return {r["request_id"]: dict(r) for r in db.execute("SELECT * FROM ledger")}

    async def fetch() -> dict[str, dict[str, object]]:
        conn = await asyncpg.connect(POSTGRES)
        try:
            return {r["request_id"]: dict(r) for r in await conn.fetch("SELECT * FROM ledger")}
        finally:
            await conn.close()

    return asyncio.run(fetch())


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_every_request_gets_a_ledger_row(tmp_path: Path, fake_upstream: LiveServer, database: str) -> None:
    data = tmp_path / "data"
    extra = ["--data-dir", str(data)] + (["--database-url", POSTGRES] if database == "postgresql" else [])
    server = start_modelyard(tmp_path, write_config(tmp_path / "fleet.yaml", FLEET.format(url=fake_upstream.url)), extra)
    ids: dict[str, str] = {}
    try:
        ids["ok"] = chat(server, "priced").headers["x-request-id"]
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "x y"}], "max_tokens": 3, "stream": True}) as response:
            ids["stream"] = response.headers["x-request-id"]
            response.read()
        ids["retried"] = chat(server, "flaky").headers["x-request-id"]
        ids["error"] = chat(server, "no-such-model").headers["x-request-id"]
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": True}) as response:
            ids["cancelled"] = response.headers["x-request-id"]
            for line in response.iter_lines():
                if '"content"' in line:
                    break  # hang up mid-stream
        usage = httpx.get(server.url + "/admin/usage", params={"group_by": "served_model"}).json()["data"]
        assert {row["served_model"] for row in usage} >= {"priced", "flaky"}
        csv_text = httpx.get(server.url + "/admin/usage", params={"group_by": "tenant,day", "format": "csv"}).text
        assert csv_text.splitlines()[0].startswith("tenant,day,requests")
        assert httpx.get(server.url + "/admin/usage", params={"group_by": "password"}).status_code == 400
    finally:
        assert server.stop(signal.SIGTERM) == 0  # rows still in the buffer must be written on shutdown
    rows = ledger_rows(database, data)
    assert set(ids.values()) <= set(rows)
    ok = rows[ids["ok"]]
    assert (ok["status"], ok["prompt_tokens"], ok["completion_tokens"], ok["attempts"]) == (200, 3, 4, 1)
    assert ok["cost_usd"] == pytest.approx((3 * 1000 + 4 * 2000) / 1_000_000)
    assert ok["tenant"] == "default" and ok["served_model"] == "priced" and ok["ttft_ms"] > 0
    stream = rows[ids["stream"]]
    assert (stream["status"], stream["completion_tokens"]) == (200, 3)
    retried = rows[ids["retried"]]
    assert retried["attempts"] == 2 and retried["deployment"] == "flaky/good"
    token_cost = (3 * 1000 + 4 * 2000) / 1_000_000
    assert retried["cost_usd"] > token_cost  # the failed attempt's replica time is paid for too
    error = rows[ids["error"]]
    assert (error["status"], error["error_type"]) == (404, "invalid_request_error")
    assert rows[ids["cancelled"]]["status"] == 200 and rows[ids["cancelled"]]["latency_ms"] < 2000
    db_args = ["--database-url", POSTGRES] if database == "postgresql" else []
    table = subprocess.run([sys.executable, "-m", "modelyard.cli", "usage", "--data-dir", str(data), "--group-by", "served_model", *db_args], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "priced" in table.stdout and "cost_usd" in table.stdout
    trace_file = tmp_path / "trace.jsonl"
    export = subprocess.run([sys.executable, "-m", "modelyard.cli", "usage", "--data-dir", str(data), "--export-trace", str(trace_file), *db_args],
                            capture_output=True, text=True, timeout=60)
    assert export.returncode == 0, export.stderr
    trace = parse_trace(trace_file.read_text())
    chats = [r for r in rows.values() if r["endpoint"] == "/v1/chat/completions"]
    assert len(trace) == len(chats) and trace[0].arrival_s == 0.0
    assert (3, 4, "priced", "default", "interactive") in {(t.input_tokens, t.output_tokens, t.model, t.tenant, t.workload) for t in trace}


def test_a_durable_ledger_has_every_answered_requests_row_when_the_replica_is_killed(tmp_path: Path, fake_upstream: LiveServer) -> None:
    """server.durable_ledger: the last byte waits for the row, so SIGKILL right after an answer loses nothing.

    Without it rows wait up to a flush interval (0.25 s) in memory and the same kill loses the latest.
    """
    data = tmp_path / "data"
    with fresh_database(POSTGRES) as database:
        fleet = "server: {durable_ledger: true}\n" + FLEET.format(url=fake_upstream.url)
        server = start_modelyard(tmp_path, write_config(tmp_path / "fleet.yaml", fleet), ["--data-dir", str(data), "--database-url", database])
        try:
            answered = [chat(server, "priced").headers["x-request-id"] for _ in range(5)]
        finally:
            server.stop(signal.SIGKILL)

        async def fetch() -> set[str]:
            conn = await asyncpg.connect(database)
            try:
                return {r["request_id"] for r in await conn.fetch("SELECT request_id FROM ledger")}
            finally:
                await conn.close()

        written = asyncio.run(fetch())
    assert set(answered) <= written
