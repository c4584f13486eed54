"""One small database interface with two backends: SQLite (embedded default) and PostgreSQL.

Everything modelyard keeps (tenants, keys, files, batch jobs and their lines,
the ledger) is written through :class:`Database`, so one replica or many run
the same store code; only the connection differs. SQL is written once with
``?`` placeholders; the PostgreSQL backend numbers them (``$1``, ``$2``...).
DDL uses three words that differ by dialect: ``{real}``, ``{blob}``,
``{serial}`` (see :data:`DIALECTS`).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

DIALECTS = {
    "sqlite": {"real": "REAL", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"real": "DOUBLE PRECISION", "blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY"},
}


class DuplicateRow(Exception):
    """An insert hit a unique or primary key constraint."""


class StoreUnavailable(Exception):
    """The database cannot be reached or opened; the message says which and why."""


class Connection(Protocol):
    """What a statement runs on: the database itself, or one open transaction."""

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None: ...

    async def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    async def columns(self, table: str) -> set[str]:
        """Column names of ``table`` (empty when the table does not exist)."""
        ...


class Database(Connection, Protocol):
    """A connection that can also open transactions and take the migration lock."""

    dialect: str

    async def transaction(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``body`` in one transaction: committed when it returns, rolled back when it raises."""
        ...

    async def migration_lock(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``body`` in a transaction that no other process runs at the same time."""
        ...

    async def aclose(self) -> None: ...


def ddl(statement: str, dialect: str) -> str:
    """A DDL template in the given dialect."""
    return statement.format(**DIALECTS[dialect])


# ---------------------------------------------------------------------------------------- SQLite
class _SQLiteConnection:
    """Statements on the one SQLite connection, run in a worker thread under a lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, in_transaction: bool) -> None:
        self._db = db
        self._lock = lock
        self._in_transaction = in_transaction

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._in_transaction:  # the transaction's thread already holds the lock
            return fn(self._db)

        def locked() -> T:
            with self._lock:
                return fn(self._db)

        return await asyncio.to_thread(locked)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        def run(db: sqlite3.Connection) -> int:
            try:
                return db.execute(sql, tuple(args)).rowcount
            except sqlite3.IntegrityError as exc:
                raise DuplicateRow(str(exc)) from None

        return await self._call(run)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self._call(lambda db: [dict(r) for r in db.execute(sql, tuple(args)).fetchall()])

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        row = await self._call(lambda db: db.execute(sql, tuple(args)).fetchone())
        return dict(row) if row is not None else None

    async def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"

        def run(db: sqlite3.Connection) -> None:
            if self._in_transaction:
                db.executemany(sql, rows)
                return
            db.execute("BEGIN IMMEDIATE")  # one commit for all rows, not one per row
            try:
                db.executemany(sql, rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._call(run)

    async def columns(self, table: str) -> set[str]:
        return await self._call(lambda db: {row[1] for row in db.execute(f"PRAGMA table_info({table})")})


class SQLiteDatabase(_SQLiteConnection):
    """One SQLite file in WAL mode; every call runs off the event loop.

    A transaction holds the connection's lock for its whole body, and its
    statements run on the event loop's thread; SQLite calls are short, and
    holding the lock is what keeps a transaction's statements together.
    """

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc}") from None
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        super().__init__(db, threading.Lock(), in_transaction=False)
        self._writer = asyncio.Lock()

    async def transaction(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        async with self._writer:  # one transaction at a time from this process
            await asyncio.to_thread(self._lock.acquire)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = await body(_SQLiteConnection(self._db, self._lock, in_transaction=True))
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
            finally:
                self._lock.release()

    async def migration_lock(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        return await self.transaction(body)  # BEGIN IMMEDIATE already excludes other writers of the file

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()


# ------------------------------------------------------------------------------------ PostgreSQL
_PLACEHOLDER = re.compile(r"\?")
MIGRATION_LOCK_ID = 0x6D6F64656C  # "model": one advisory lock id for schema changes
UNIQUE_VIOLATION = "23505"


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (modelyard's SQL has no literal '?')."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PostgresConnection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        try:
            status = await self._conn.execute(numbered(sql), *args)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == UNIQUE_VIOLATION:
                raise DuplicateRow(str(exc)) from None
            raise
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._conn.fetch(numbered(sql), *args)]

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(numbered(sql), *args)
        return dict(row) if row is not None else None

    async def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.copy_records_to_table(table, records=[tuple(r) for r in rows], columns=list(columns))

    async def columns(self, table: str) -> set[str]:
        rows = await self._conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1", table)
        return {r["column_name"] for r in rows}


class _PooledConnection:
    """Each statement on a connection borrowed from the pool for that statement."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def _with(self, fn: Callable[[_PostgresConnection], Awaitable[T]]) -> T:
        async with self._pool.acquire() as conn:
            return await fn(_PostgresConnection(conn))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return await self._with(lambda c: c.execute(sql, args))

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self._with(lambda c: c.fetch(sql, args))

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        return await self._with(lambda c: c.fetchone(sql, args))

    async def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        async def copy(c: _PostgresConnection) -> None:
            async with c._conn.transaction():
                await c.insert_many(table, columns, rows)

        await self._with(copy)

    async def columns(self, table: str) -> set[str]:
        return await self._with(lambda c: c.columns(table))


class PostgresDatabase(_PooledConnection):
    """A pool of asyncpg connections to the database at ``dsn``."""

    dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        super().__init__(pool)

    @classmethod
    async def connect(cls, dsn: str, max_size: int = 8) -> PostgresDatabase:
        import asyncpg

        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {_redacted(dsn)}: {exc}") from None
        return cls(pool)

    async def transaction(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        async with self._pool.acquire() as conn, conn.transaction():
            return await body(_PostgresConnection(conn))

    async def migration_lock(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        async def locked(conn: Connection) -> T:
            await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            return await body(conn)

        return await self.transaction(locked)

    async def aclose(self) -> None:
        await self._pool.close()


def _redacted(dsn: str) -> str:
    """The DSN without its password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", dsn)


async def open_database(data_dir: Path, database_url: str | None) -> Database:
    """PostgreSQL when ``database_url`` names one, else ``modelyard.db`` in the data directory."""
    if database_url and database_url.startswith(("postgresql://", "postgres://")):
        return await PostgresDatabase.connect(database_url)
    if database_url:
        raise StoreUnavailable(f"unsupported --database-url {database_url!r}: expected postgresql://...")
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteDatabase(data_dir / "modelyard.db")
