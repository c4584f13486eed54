"""The usage ledger: one row per request, written in batches off the request path.

Rows go to an in-memory buffer; a background task writes them every
``flush_s`` in one transaction. ``aclose`` writes whatever is left, so a
graceful shutdown (SIGTERM) loses nothing. Two sinks hold the rows: the data
directory's SQLite file (default) or PostgreSQL (``--database-url``): the
store's database, whichever it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from modelyard.store.database import Connection, Database
from modelyard.tasks import stop_task

log = logging.getLogger("modelyard.ledger")

COLUMNS = (
    "ts", "day", "request_id", "endpoint", "tenant", "api_key", "workload", "session", "requested_model", "served_model",
    "deployment", "route", "attempts", "prompt_tokens", "completion_tokens", "cost_usd", "revenue_usd", "latency_ms", "ttft_ms", "status", "error_type",
    "cache", "saved_usd", "upstream_ms",
)
RECENT = "ts, tenant, requested_model, served_model, route, latency_ms, status, cost_usd, revenue_usd, cache, saved_usd"
# What a trace needs: arrival (the row is written when the request ends), sizes, who and what.
TRACE = (
    "ts - COALESCE(latency_ms, 0) / 1000.0 AS arrival, prompt_tokens, completion_tokens, tenant, workload, requested_model "
    "FROM ledger WHERE endpoint IN ('/v1/chat/completions', '/v1/completions')"
)
# What fitting a deployment's speed needs: answered requests served upstream in one attempt (not from the cache).
TIMINGS = (
    "SELECT deployment, prompt_tokens, completion_tokens, ttft_ms, upstream_ms FROM ledger "
    "WHERE status = 200 AND attempts = 1 AND ttft_ms IS NOT NULL AND upstream_ms IS NOT NULL AND (cache IS NULL OR cache <> 'hit')"
)
GROUPABLE = ("tenant", "api_key", "requested_model", "served_model", "deployment", "workload", "day", "endpoint")
AGGREGATES = (
    "COUNT(*) AS requests, SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors, SUM(prompt_tokens) AS prompt_tokens, "
    "SUM(completion_tokens) AS completion_tokens, SUM(attempts) AS attempts, SUM(cost_usd) AS cost_usd, "
    "SUM(COALESCE(revenue_usd, 0)) AS revenue_usd, SUM(COALESCE(revenue_usd, 0)) - SUM(cost_usd) AS margin_usd, AVG(latency_ms) AS avg_latency_ms, "
    "SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END) AS cache_hits, SUM(COALESCE(saved_usd, 0)) AS saved_usd"
)


SPEND_UPSERT = (
    "INSERT INTO spend_daily (tenant, api_key, day, cost_usd) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (tenant, api_key, day) DO UPDATE SET cost_usd = spend_daily.cost_usd + excluded.cost_usd"
)
_TENANT, _API_KEY, _DAY, _COST = (COLUMNS.index(c) for c in ("tenant", "api_key", "day", "cost_usd"))


def spend_of(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str, str], float]:
    """What ledger rows add to each (tenant, api key or '', day)."""
    out: dict[tuple[str, str, str], float] = {}
    for row in rows:
        slot = (row[_TENANT] or "", row[_API_KEY] or "", row[_DAY])
        out[slot] = out.get(slot, 0.0) + float(row[_COST] or 0.0)
    return out


EVENT_COLUMNS = ("ts", "tenant", "session", "request_id", "kind", "call_id", "name", "content")


class LedgerSink(Protocol):
    """Where ledger rows (and sessions' tool events) live."""

    async def setup(self) -> None: ...
    async def insert(self, rows: list[tuple[Any, ...]]) -> None: ...
    async def insert_events(self, rows: list[tuple[Any, ...]]) -> None: ...
    async def aggregate(self, group_by: tuple[str, ...], since: str | None, until: str | None) -> list[dict[str, Any]]: ...
    async def spend_by_owner(self) -> list[dict[str, Any]]: ...
    async def since(self, ts: float) -> list[dict[str, Any]]: ...
    async def trace(self, since: str | None, until: str | None) -> list[dict[str, Any]]: ...
    async def timings(self, deployments: tuple[str, ...], since: str | None, until: str | None) -> list[dict[str, Any]]: ...
    async def aclose(self) -> None: ...


def _days(since: str | None, until: str | None) -> tuple[list[str], list[str]]:
    """The ``day`` conditions and their arguments for an optional first and last day."""
    bounds = [(op, value) for op, value in ((">=", since), ("<=", until)) if value]
    return [f"day {op} ?" for op, _ in bounds], [value for _, value in bounds]


def _query(group_by: tuple[str, ...], since: str | None, until: str | None) -> tuple[str, list[str]]:
    bad = [g for g in group_by if g not in GROUPABLE]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)} (choose from {', '.join(GROUPABLE)})")
    where, args = _days(since, until)
    keys = ", ".join(group_by)
    sql = f"SELECT {keys + ', ' if keys else ''}{AGGREGATES} FROM ledger"
    sql += f" WHERE {' AND '.join(where)}" if where else ""
    sql += f" GROUP BY {keys} ORDER BY {keys}" if keys else ""
    return sql, args


def _trace_query(since: str | None, until: str | None) -> tuple[str, list[str]]:
    where, args = _days(since, until)
    return f"SELECT {TRACE}" + "".join(f" AND {w}" for w in where) + " ORDER BY arrival", args


def _timings_query(deployments: tuple[str, ...], since: str | None, until: str | None) -> tuple[str, list[str]]:
    where, days = _days(since, until)
    sql = TIMINGS + (f" AND deployment IN ({', '.join('?' for _ in deployments)})" if deployments else " AND 1 = 0")
    return sql + "".join(f" AND {w}" for w in where) + " ORDER BY ts", list(deployments) + days


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(v), 8) if k.endswith("_usd") and v is not None else (round(float(v), 2) if k == "avg_latency_ms" and v is not None else v) for k, v in row.items()}


class DatabaseLedger:
    """The ledger table in the store's database (SQLite or PostgreSQL; schema: store/migrations.py)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def setup(self) -> None:
        return None  # the table is created by the store's migrations

    async def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """The rows, and what they add to each owner's spend, in one transaction."""
        spend = spend_of(rows)

        async def write(conn: Connection) -> None:
            await conn.insert_many("ledger", COLUMNS, rows)
            for (tenant, api_key, day), cost in spend.items():
                await conn.execute(SPEND_UPSERT, (tenant, api_key, day, cost))

        await self.db.transaction(write)

    async def insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        await self.db.insert_many("session_events", EVENT_COLUMNS, rows)

    async def aggregate(self, group_by: tuple[str, ...], since: str | None, until: str | None) -> list[dict[str, Any]]:
        sql, args = _query(group_by, since, until)
        return [_rounded(r) for r in await self.db.fetch(sql, args)]

    async def spend_by_owner(self) -> list[dict[str, Any]]:
        """Spend per tenant, key and day (``api_key`` None for requests without one), from the kept sums."""
        rows = await self.db.fetch("SELECT tenant, api_key, day, cost_usd AS cost FROM spend_daily")
        return [r | {"api_key": r["api_key"] or None} for r in rows]

    async def since(self, ts: float) -> list[dict[str, Any]]:
        return await self.db.fetch(f"SELECT {RECENT} FROM ledger WHERE ts >= ? ORDER BY ts", (ts,))

    async def trace(self, since: str | None, until: str | None) -> list[dict[str, Any]]:
        sql, args = _trace_query(since, until)
        return await self.db.fetch(sql, args)

    async def timings(self, deployments: tuple[str, ...], since: str | None, until: str | None) -> list[dict[str, Any]]:
        sql, args = _timings_query(deployments, since, until)
        return await self.db.fetch(sql, args)

    async def aclose(self) -> None:
        return None  # the store owns the database


class LedgerWriter:
    """Rows buffered off the request path and written every ``flush_s``, or at once for :meth:`committed`."""

    def __init__(self, sink: LedgerSink, flush_s: float = 0.25, durable_wait_s: float = 2.0) -> None:
        self.sink = sink
        self.flush_s = flush_s
        self.durable_wait_s = durable_wait_s
        self.buffer: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []  # sessions' tool calls and results (EVENT_COLUMNS)
        self.task: asyncio.Task[None] | None = None
        self.recorded = 0  # rows recorded so far
        self.written = 0  # rows written so far (the buffer holds the rest)
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._flushing = asyncio.Lock()  # one write at a time, so rows are written in the order recorded

    async def start(self) -> None:
        await self.sink.setup()
        self.task = asyncio.create_task(self._loop(), name="ledger-writer")

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row (no I/O on the request path)."""
        self.buffer.append(tuple(map(row.get, COLUMNS)))
        self.recorded += 1

    def record_events(self, events: list[dict[str, Any]]) -> None:
        """Queue a session's tool events (written with the next batch of rows)."""
        self.events += [tuple(e.get(c) for c in EVENT_COLUMNS) for e in events]

    async def committed(self) -> bool:
        """Wait until every row recorded so far is written (rows of concurrent requests go in one write).

        False when the database did not take them within ``durable_wait_s``: the rows stay buffered and
        are written later, and the caller goes on rather than hang.
        """
        target = self.recorded
        if self.written >= target:
            return True
        self._wake.set()
        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(lambda: self.written >= target), self.durable_wait_s)
            return True
        except TimeoutError:
            log.warning("ledger rows not committed within %.1fs; the response goes out and the rows are written later", self.durable_wait_s)
            return False

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the database is down: keep the rows and try again
                log.exception("ledger flush failed; rows are kept for the next try")
                await asyncio.sleep(self.flush_s)

    async def flush(self) -> None:
        async with self._flushing:
            if self.events:
                events, self.events = self.events, []
                try:
                    await self.sink.insert_events(events)
                except BaseException:
                    self.events[:0] = events
                    raise
            if not self.buffer:
                return
            rows, self.buffer = self.buffer, []
            try:
                await self.sink.insert(rows)
            except BaseException:
                self.buffer[:0] = rows  # nothing accepted is lost
                raise
            self.written += len(rows)
        async with self._progress:
            self._progress.notify_all()

    async def usage(self, group_by: tuple[str, ...], since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Aggregates per ``group_by`` columns, including rows not yet flushed."""
        await self.flush()
        return await self.sink.aggregate(group_by, since, until)

    async def trace(self, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Generation requests in arrival order (for ``modelyard usage --export-trace``), including rows not yet flushed."""
        await self.flush()
        return await self.sink.trace(since, until)

    async def timings(self, deployments: tuple[str, ...], since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Answered one-attempt requests of ``deployments`` (TTFT and the attempt's own time), oldest first, including rows not yet flushed."""
        await self.flush()
        return await self.sink.timings(deployments, since, until)

    async def recent(self, ts: float) -> list[dict[str, Any]]:
        """Rows since ``ts`` (epoch seconds), including rows not yet flushed."""
        await self.flush()
        return await self.sink.since(ts)

    async def aclose(self) -> None:
        await stop_task(self.task)
        await self.flush()
        await self.sink.aclose()
