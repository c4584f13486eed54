"""The store on both backends (one suite, SQLite and PostgreSQL): migrations, files, accounts, leases.

Leases and their takeover run on a hand-driven clock: no sleeps decide who
holds a line.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.pipeline.batch_runner import BatchRunner
from modelyard.pipeline.batches import BatchOwner, LineResult
from modelyard.store.accounts import AccountError, Accounts
from modelyard.store.database import open_database
from modelyard.store.migrations import LATEST, SchemaTooNew, migrate, schema_version
from modelyard.store.store import Store, open_store

from .services import DATABASE_ENV, fresh_database, service_url

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: SQLite in the test's data directory; else a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_database(service_url(DATABASE_ENV)) as url:
        yield url


@pytest.fixture
async def store(tmp_path: Path, database_url: str | None) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "data", database_url)
    yield opened
    await opened.aclose()


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- migrations -------------------------------------------------------------------------------------
async def test_migrations_apply_once_even_when_replicas_start_together(tmp_path: Path, database_url: str | None) -> None:
    first, second = await open_database(tmp_path, database_url), await open_database(tmp_path, database_url)
    try:
        applied = await asyncio.gather(migrate(first), migrate(second))
        assert sorted(applied, key=len) == [[], list(range(1, LATEST + 1))]
        assert await schema_version(first) == LATEST
        assert await migrate(first) == []
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_older_replica_refuses_a_newer_schema(tmp_path: Path, database_url: str | None) -> None:
    db = await open_database(tmp_path, database_url)
    try:
        await migrate(db)
        await db.execute("INSERT INTO schema_version (version, applied_at, description) VALUES (?, ?, ?)", (LATEST + 1, "later", "from the future"))
        with pytest.raises(SchemaTooNew, match=f"version {LATEST + 1}.*only up to {LATEST}"):
            await open_store(tmp_path, database_url)
    finally:
        await db.aclose()


async def test_a_data_directory_from_before_versioning_is_adopted(tmp_path: Path) -> None:
    """Tables as the first releases wrote them (no key column on batches, no revenue, files on disk) gain what they lack."""
    data = tmp_path / "data"
    (data / "files").mkdir(parents=True)
    old = sqlite3.connect(data / "modelyard.db")
    old.executescript(
        "CREATE TABLE files (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL, "
        "created_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE batches (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL, "
        "completion_window TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, "
        "in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER, cancelling_at INTEGER, "
        "cancelled_at INTEGER, output_file_id TEXT, error_file_id TEXT, errors TEXT);"
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, ts DOUBLE PRECISION NOT NULL, day TEXT NOT NULL, tenant TEXT, cost_usd DOUBLE PRECISION);"
        "INSERT INTO files VALUES ('file-old', 'default', 'batch', 'old.jsonl', 3, 1, 0);"
    )
    old.commit()
    old.close()
    (data / "files" / "file-old.jsonl").write_bytes(b"old")
    store = await open_store(data, None)
    try:
        assert {"api_key", "lease_owner", "lease_expires"} <= await store.db.columns("batches")
        assert "revenue_usd" in await store.db.columns("ledger")
        assert await store.file_content("file-old") == b"old"
        assert await schema_version(store.db) == LATEST
    finally:
        await store.aclose()


# -- files and accounts --------------------------------------------------------------------------
async def test_file_bodies_live_in_the_database(store: Store) -> None:
    row = await store.add_file("acme", "batch", "in.jsonl", b"\x00binary\xff and text")
    assert await store.file_content(row["id"]) == b"\x00binary\xff and text"
    assert [f["id"] for f in await store.list_files("acme", "batch", 10)] == [row["id"]]
    assert await store.get_file("other-tenant", row["id"]) is None
    assert await store.delete_file("acme", row["id"])
    assert not await store.delete_file("acme", row["id"])
    with pytest.raises(FileNotFoundError):
        await store.file_content(row["id"])


async def test_accounts_on_both_backends(store: Store) -> None:
    accounts = Accounts(store.db)
    await accounts.create_tenant("acme", rpm=10)
    with pytest.raises(AccountError, match="already exists"):
        await accounts.create_tenant("acme")
    with pytest.raises(AccountError, match="unknown tenant"):
        await accounts.create_key("nobody")
    key = await accounts.create_key("acme", "ci", ["m1"], budget=(1.0, None, None))
    assert key["key"].startswith("my-") and key["budget"]["day"] == 1.0
    assert await accounts.set_plan("acme", 1.0, 2.0, 0.0)
    active = await accounts.active_keys()
    assert [(k["id"], k["tenant_rpm"], json.loads(k["allowed_models"])) for k in active] == [(key["id"], 10, ["m1"])]
    assert await accounts.revoke(key["id"]) and await accounts.active_keys() == []


# -- leases -------------------------------------------------------------------------------------------
async def _batch(store: Store, lines: int) -> str:
    batch_id = "batch_test" + str(lines)
    await store.add_batch({
        "id": batch_id, "tenant": "acme", "api_key": None, "input_file_id": "file-x", "endpoint": "/v1/chat/completions",
        "completion_window": "24h", "metadata": None, "status": "validating", "created_at": 1, "expires_at": 10**10,
    })
    body = json.dumps({"model": "m", "messages": []})
    assert await store.start_batch(batch_id, [(n, f"c{n}", body, "pending", None) for n in range(1, lines + 1)])
    return batch_id


async def test_line_leases_expire_and_are_taken_over(store: Store) -> None:
    batch_id = await _batch(store, 5)
    a = await store.claim_lines(batch_id, "replica-a", now=0.0, ttl_s=30.0, limit=2)
    assert [r["line_no"] for r in a] == [1, 2]
    b = await store.claim_lines(batch_id, "replica-b", now=10.0, ttl_s=30.0, limit=5)
    assert [r["line_no"] for r in b] == [3, 4, 5]
    assert await store.claim_lines(batch_id, "replica-c", now=20.0, ttl_s=30.0, limit=5) == []
    assert await store.renew_lines(batch_id, "replica-a", [1, 2], now=25.0, ttl_s=30.0) == 2
    assert await store.live_leases(batch_id, now=39.0) == 5
    expired = await store.claim_lines(batch_id, "replica-c", now=45.0, ttl_s=30.0, limit=5)
    assert [r["line_no"] for r in expired] == [3, 4, 5], "b's leases expired at 40; a's renewed ones hold until 55"
    taken = await store.claim_lines(batch_id, "replica-c", now=56.0, ttl_s=30.0, limit=5)
    assert [r["line_no"] for r in taken] == [1, 2]
    assert await store.renew_lines(batch_id, "replica-a", [1, 2], now=57.0, ttl_s=30.0) == 0, "a lost lease cannot be renewed"
    assert await store.finish_line(batch_id, 1, "done", {"n": "c"}, None)
    assert not await store.finish_line(batch_id, 1, "done", {"n": "a"}, None), "a line is answered once"
    assert json.loads((await store.all_lines(batch_id))[0]["response"]) == {"n": "c"}


async def test_the_batch_lease_admits_one_replica(store: Store) -> None:
    batch_id = await _batch(store, 1)
    assert await store.claim_batch(batch_id, "replica-a", now=0.0, ttl_s=30.0)
    assert not await store.claim_batch(batch_id, "replica-b", now=29.0, ttl_s=30.0)
    assert await store.claim_batch(batch_id, "replica-a", now=29.0, ttl_s=30.0), "the holder renews"
    assert await store.claim_batch(batch_id, "replica-b", now=60.0, ttl_s=30.0)


class Executor:
    """Answers lines, or holds them until released (a replica stuck or about to die)."""

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, endpoint: str, body: dict[str, Any], owner: BatchOwner) -> LineResult:
        self.calls.append(body["custom"])
        self.started.set()
        await self.release.wait()
        return LineResult(200, {"answer": body["custom"]})


async def _submitted(store: Store, lines: int) -> str:
    content = "".join(
        json.dumps({"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "custom": f"c{n}"}}) + "\n"
        for n in range(1, lines + 1)
    )
    source = await store.add_file("acme", "batch", "in.jsonl", content.encode())
    batch_id = f"batch_{source['id'][5:]}"
    await store.add_batch({
        "id": batch_id, "tenant": "acme", "api_key": None, "input_file_id": source["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h", "metadata": None, "status": "validating", "created_at": 1, "expires_at": 10**10,
    })
    return batch_id


async def _output(store: Store, batch_id: str) -> list[str]:
    row = await store.get_batch(None, batch_id)
    assert row is not None and row["status"] == "completed", row
    return [json.loads(line)["custom_id"] for line in (await store.file_content(row["output_file_id"])).decode().splitlines()]


async def test_a_dead_replicas_lines_are_finished_by_another_once(store: Store) -> None:
    clock = Clock()
    stuck, healthy = Executor(hold=True), Executor()
    dying = BatchRunner(store, stuck, concurrency=2, lease_s=30.0, replica="dying", clock=clock)
    survivor = BatchRunner(store, healthy, concurrency=2, lease_s=30.0, replica="survivor", clock=clock)
    batch_id = await _submitted(store, 5)
    assert await dying.step()  # validates
    held = asyncio.create_task(dying.step())  # leases lines 1 and 2, then hangs on them
    await stuck.started.wait()
    while len(stuck.calls) < 2:
        await asyncio.sleep(0)
    while await survivor.step():  # answers 3, 4, 5; 1 and 2 are leased
        pass
    assert sorted(healthy.calls) == ["c3", "c4", "c5"]
    assert (await store.get_batch(None, batch_id) or {})["status"] == "in_progress"
    held.cancel()  # the replica dies: it never renews nor answers
    clock.now += 31.0
    while await survivor.step():
        pass
    assert sorted(healthy.calls) == ["c1", "c2", "c3", "c4", "c5"]
    assert sorted(await _output(store, batch_id)) == ["c1", "c2", "c3", "c4", "c5"]


async def test_cancel_from_another_replica_waits_for_running_lines(store: Store) -> None:
    clock = Clock()
    slow = Executor(hold=True)
    worker = BatchRunner(store, slow, concurrency=2, lease_s=30.0, replica="worker", clock=clock)
    other = BatchRunner(store, Executor(), concurrency=2, lease_s=30.0, replica="other", clock=clock)
    batch_id = await _submitted(store, 4)
    await worker.step()
    running = asyncio.create_task(worker.step())
    await slow.started.wait()
    assert await store.set_status(batch_id, "cancelling", "cancelling_at", expected=("in_progress",))  # the API on any replica
    await other.step()
    assert (await store.get_batch(None, batch_id) or {})["status"] == "cancelling", "lines still run on the worker"
    slow.release.set()
    await running
    await other.step()
    row = await store.get_batch(None, batch_id)
    assert row is not None and row["status"] == "cancelled"
    done = [json.loads(line)["custom_id"] for line in (await store.file_content(row["output_file_id"])).decode().splitlines()]
    assert sorted(done) == ["c1", "c2"] and sorted(slow.calls) == ["c1", "c2"]


async def test_a_replica_that_shuts_down_gives_its_lines_back_at_once(store: Store) -> None:
    clock = Clock()
    stuck = Executor(hold=True)
    stopping = BatchRunner(store, stuck, concurrency=2, lease_s=30.0, replica="stopping", clock=clock, poll_s=0.01)
    batch_id = await _submitted(store, 3)
    stopping.start()
    await stuck.started.wait()
    while len(stuck.calls) < 2:
        await asyncio.sleep(0)
    await stopping.aclose()
    assert await store.live_leases(batch_id, clock()) == 0
    taken = await store.claim_lines(batch_id, "next", clock(), 30.0, 5)
    assert [line["line_no"] for line in taken] == [1, 2, 3], "no wait for the lease to expire"


async def test_the_session_list_counts_each_sessions_events_on_both_backends(store: Store) -> None:
    from modelyard.store.ledger import COLUMNS, DatabaseLedger
    from modelyard.store.session_log import SessionLog

    ledger = DatabaseLedger(store.db)

    def step(tenant: str, session: str, ts: float) -> tuple[Any, ...]:
        row = {"ts": ts, "day": "2026-12-06", "request_id": f"{tenant}-{session}-{ts}", "tenant": tenant, "session": session,
               "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.001, "latency_ms": 100.0, "status": 200}
        return tuple(row.get(c) for c in COLUMNS)

    # The same session name under two tenants must not mix their counts.
    await ledger.insert([step("acme", "s1", 10.0), step("acme", "s1", 11.0), step("beta", "s1", 12.0), step("acme", "s2", 13.0)])
    await ledger.insert_events([
        (10.0, "acme", "s1", "r1", "tool_call", "c1", "f", "{}"), (11.0, "acme", "s1", "r2", "tool_call", "c2", "f", "{}"),
        (12.0, "beta", "s1", "r3", "tool_call", "c3", "f", "{}"), (12.5, "beta", "s1", "r3", "stopped", None, None, "budget"),
    ])
    listed = {(r["tenant"], r["session"]): r for r in await SessionLog(store.db).sessions()}
    assert {k: (r["steps"], r["tool_calls"], r["stopped"]) for k, r in listed.items()} == {
        ("acme", "s1"): (2, 2, False), ("beta", "s1"): (1, 1, True), ("acme", "s2"): (1, 0, False),
    }


async def test_spend_per_owner_is_kept_with_every_ledger_write_on_both_backends(store: Store) -> None:
    from modelyard.store.ledger import COLUMNS, DatabaseLedger

    ledger = DatabaseLedger(store.db)

    def row(tenant: str, key: str | None, day: str, cost: float) -> tuple[Any, ...]:
        values = {"ts": 1.0, "day": day, "request_id": f"{tenant}{key}{day}{cost}", "tenant": tenant, "api_key": key, "cost_usd": cost, "status": 200}
        return tuple(values.get(c) for c in COLUMNS)

    await ledger.insert([row("acme", "k1", "2026-12-05", 0.25), row("acme", "k1", "2026-12-05", 0.5), row("acme", None, "2026-12-05", 1.0)])
    await ledger.insert([row("acme", "k1", "2026-12-05", 0.25), row("beta", "k2", "2026-12-06", 2.0)])  # adds to the kept sum
    spend = {(r["tenant"], r["api_key"], r["day"]): r["cost"] for r in await ledger.spend_by_owner()}
    assert spend == {("acme", "k1", "2026-12-05"): pytest.approx(1.0), ("acme", None, "2026-12-05"): pytest.approx(1.0),
                     ("beta", "k2", "2026-12-06"): pytest.approx(2.0)}
    # the kept sums are the ledger's own sums
    summed = await store.db.fetch("SELECT tenant, api_key, day, SUM(cost_usd) AS cost FROM ledger GROUP BY tenant, api_key, day")
    assert {(r["tenant"], r["api_key"], r["day"]): pytest.approx(r["cost"]) for r in summed} == spend


async def test_spend_of_a_ledger_written_before_the_spend_table_is_carried_over(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(parents=True)
    old = sqlite3.connect(data / "modelyard.db")
    old.executescript(
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, ts DOUBLE PRECISION NOT NULL, day TEXT NOT NULL, tenant TEXT, api_key TEXT, cost_usd DOUBLE PRECISION);"
        "INSERT INTO ledger (ts, day, tenant, api_key, cost_usd) VALUES (1, '2026-12-01', 'acme', 'k1', 0.5), (2, '2026-12-01', 'acme', 'k1', 0.25), "
        "(3, '2026-12-02', 'acme', NULL, 1.5);"
    )
    old.commit()
    old.close()
    store = await open_store(data, None)
    try:
        from modelyard.store.ledger import DatabaseLedger

        spend = {(r["tenant"], r["api_key"], r["day"]): r["cost"] for r in await DatabaseLedger(store.db).spend_by_owner()}
        assert spend == {("acme", "k1", "2026-12-01"): pytest.approx(0.75), ("acme", None, "2026-12-02"): pytest.approx(1.5)}
    finally:
        await store.aclose()
