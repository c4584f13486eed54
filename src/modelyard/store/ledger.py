"""The usage ledger: one row per request, written in batches off the request path.

Rows go to an in-memory buffer; a background task writes them every
``flush_s`` in one transaction. ``aclose`` writes whatever is left, so a
graceful shutdown (SIGTERM) loses nothing. Two sinks hold the rows: the data
directory's SQLite file (default) or PostgreSQL (``--database-url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Any, Protocol

from modelyard.store.sqlite import Store

log = logging.getLogger("modelyard.ledger")

COLUMNS = (
    "ts", "day", "request_id", "endpoint", "tenant", "api_key", "workload", "session", "requested_model", "served_model",
    "deployment", "route", "attempts", "prompt_tokens", "completion_tokens", "cost_usd", "revenue_usd", "latency_ms", "ttft_ms", "status", "error_type",
)
COLUMN_TYPES = (
    "ts DOUBLE PRECISION NOT NULL, day TEXT NOT NULL, request_id TEXT, endpoint TEXT, tenant TEXT, api_key TEXT, workload TEXT, "
    "session TEXT, requested_model TEXT, served_model TEXT, deployment TEXT, route TEXT, attempts INTEGER, prompt_tokens INTEGER, "
    "completion_tokens INTEGER, cost_usd DOUBLE PRECISION, revenue_usd DOUBLE PRECISION, latency_ms DOUBLE PRECISION, "
    "ttft_ms DOUBLE PRECISION, status INTEGER, error_type TEXT"
)
RECENT = "ts, tenant, requested_model, served_model, route, latency_ms, status, cost_usd, revenue_usd"
# What a trace needs: arrival (the row is written when the request ends), sizes, who and what.
TRACE = (
    "ts - COALESCE(latency_ms, 0) / 1000.0 AS arrival, prompt_tokens, completion_tokens, tenant, workload, requested_model "
    "FROM ledger WHERE endpoint IN ('/v1/chat/completions', '/v1/completions')"
)
GROUPABLE = ("tenant", "api_key", "requested_model", "served_model", "deployment", "workload", "day", "endpoint")
AGGREGATES = (
    "COUNT(*) AS requests, SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors, SUM(prompt_tokens) AS prompt_tokens, "
    "SUM(completion_tokens) AS completion_tokens, SUM(attempts) AS attempts, SUM(cost_usd) AS cost_usd, "
    "SUM(COALESCE(revenue_usd, 0)) AS revenue_usd, SUM(COALESCE(revenue_usd, 0)) - SUM(cost_usd) AS margin_usd, AVG(latency_ms) AS avg_latency_ms"
)


class LedgerSink(Protocol):
    """Where ledger rows live."""

    async def setup(self) -> None: ...
    async def insert(self, rows: list[tuple[Any, ...]]) -> None: ...
    async def aggregate(self, group_by: tuple[str, ...], since: str | None, until: str | None) -> list[dict[str, Any]]: ...
    async def spend_by_owner(self) -> list[dict[str, Any]]: ...
    async def since(self, ts: float) -> list[dict[str, Any]]: ...
    async def trace(self, since: str | None, until: str | None) -> list[dict[str, Any]]: ...
    async def aclose(self) -> None: ...


def _query(group_by: tuple[str, ...], since: str | None, until: str | None, mark: Any) -> tuple[str, list[str]]:
    bad = [g for g in group_by if g not in GROUPABLE]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)} (choose from {', '.join(GROUPABLE)})")
    where, args = [], []
    for op, value in ((">=", since), ("<=", until)):
        if value:
            args.append(value)
            where.append(f"day {op} {mark(len(args))}")
    keys = ", ".join(group_by)
    sql = f"SELECT {keys + ', ' if keys else ''}{AGGREGATES} FROM ledger"
    sql += f" WHERE {' AND '.join(where)}" if where else ""
    sql += f" GROUP BY {keys} ORDER BY {keys}" if keys else ""
    return sql, args


def _trace_query(since: str | None, until: str | None, mark: Any) -> tuple[str, list[str]]:
    sql, args = f"SELECT {TRACE}", []
    for op, value in ((">=", since), ("<=", until)):
        if value:
            args.append(value)
            sql += f" AND day {op} {mark(len(args))}"
    return sql + " ORDER BY arrival", args


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(v), 8) if k.endswith("_usd") and v is not None else (round(float(v), 2) if k == "avg_latency_ms" and v is not None else v) for k, v in row.items()}


class SQLiteLedger:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def setup(self) -> None:
        def ensure(db: sqlite3.Connection) -> None:
            db.execute(f"CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, {COLUMN_TYPES})")
            db.execute("CREATE INDEX IF NOT EXISTS ledger_day ON ledger (day, tenant)")
            have = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
            if "revenue_usd" not in have:  # ledgers written before price plans existed
                db.execute("ALTER TABLE ledger ADD COLUMN revenue_usd REAL")

        await self.store.run(ensure)

    async def insert(self, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" for _ in COLUMNS)
        await self.store.transaction(lambda db: db.executemany(f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({marks})", rows))

    async def aggregate(self, group_by: tuple[str, ...], since: str | None, until: str | None) -> list[dict[str, Any]]:
        sql, args = _query(group_by, since, until, lambda n: "?")
        rows = await self.store.run(lambda db: db.execute(sql, args).fetchall())
        return [_rounded(dict(r)) for r in rows]

    async def spend_by_owner(self) -> list[dict[str, Any]]:
        rows = await self.store.run(lambda db: db.execute("SELECT tenant, api_key, day, SUM(cost_usd) AS cost FROM ledger GROUP BY tenant, api_key, day").fetchall())
        return [dict(r) for r in rows]

    async def since(self, ts: float) -> list[dict[str, Any]]:
        rows = await self.store.run(lambda db: db.execute(f"SELECT {RECENT} FROM ledger WHERE ts >= ? ORDER BY ts", (ts,)).fetchall())
        return [dict(r) for r in rows]

    async def trace(self, since: str | None, until: str | None) -> list[dict[str, Any]]:
        sql, args = _trace_query(since, until, lambda n: "?")
        rows = await self.store.run(lambda db: db.execute(sql, args).fetchall())
        return [dict(r) for r in rows]

    async def aclose(self) -> None:
        return None


class PostgresLedger:
    """The ledger in PostgreSQL (asyncpg pool); for many replicas writing one ledger."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: Any = None

    async def setup(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        async with self.pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS ledger (id BIGSERIAL PRIMARY KEY, {COLUMN_TYPES})")
            await conn.execute("CREATE INDEX IF NOT EXISTS ledger_day ON ledger (day, tenant)")

    async def insert(self, rows: list[tuple[Any, ...]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table("ledger", records=rows, columns=list(COLUMNS))

    async def aggregate(self, group_by: tuple[str, ...], since: str | None, until: str | None) -> list[dict[str, Any]]:
        sql, args = _query(group_by, since, until, lambda n: f"${n}")
        async with self.pool.acquire() as conn:
            return [_rounded(dict(r)) for r in await conn.fetch(sql, *args)]

    async def spend_by_owner(self) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch("SELECT tenant, api_key, day, SUM(cost_usd) AS cost FROM ledger GROUP BY tenant, api_key, day")]

    async def since(self, ts: float) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch(f"SELECT {RECENT} FROM ledger WHERE ts >= $1 ORDER BY ts", ts)]

    async def trace(self, since: str | None, until: str | None) -> list[dict[str, Any]]:
        sql, args = _trace_query(since, until, lambda n: f"${n}")
        async with self.pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def ledger_sink(store: Store, database_url: str | None) -> LedgerSink:
    if database_url and database_url.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(database_url)
    if database_url:
        raise ValueError(f"unsupported --database-url {database_url!r}: expected postgresql://...")
    return SQLiteLedger(store)


class LedgerWriter:
    def __init__(self, sink: LedgerSink, flush_s: float = 0.25) -> None:
        self.sink = sink
        self.flush_s = flush_s
        self.buffer: list[tuple[Any, ...]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sink.setup()
        self.task = asyncio.create_task(self._loop(), name="ledger-writer")

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row (no I/O on the request path)."""
        self.buffer.append(tuple(row.get(c) for c in COLUMNS))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:  # the database is down: keep the rows and try again
                log.exception("ledger flush failed; rows are kept for the next try")

    async def flush(self) -> None:
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        try:
            await self.sink.insert(rows)
        except BaseException:
            self.buffer[:0] = rows  # nothing accepted is lost
            raise

    async def usage(self, group_by: tuple[str, ...], since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Aggregates per ``group_by`` columns, including rows not yet flushed."""
        await self.flush()
        return await self.sink.aggregate(group_by, since, until)

    async def trace(self, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Generation requests in arrival order (for ``modelyard usage --export-trace``), including rows not yet flushed."""
        await self.flush()
        return await self.sink.trace(since, until)

    async def recent(self, ts: float) -> list[dict[str, Any]]:
        """Rows since ``ts`` (epoch seconds), including rows not yet flushed."""
        await self.flush()
        return await self.sink.since(ts)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.flush()
        await self.sink.aclose()
