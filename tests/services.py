"""PostgreSQL and Redis for the test suite: the ones already running, or private ones.

``make test`` works on a fresh machine: when nothing answers on the usual
addresses (or on ``MODELYARD_TEST_DATABASE_URL`` / ``MODELYARD_TEST_REDIS_URL``
when they are set), a private instance is started with its own data directory
and port under a temporary directory and stopped when the session ends. The
binaries come from Debian's packages (``make test-services`` installs them).
Tests that need a service read its URL from the environment and fail, never
skip, when it cannot be had.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

DATABASE_ENV = "MODELYARD_TEST_DATABASE_URL"
REDIS_ENV = "MODELYARD_TEST_REDIS_URL"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ERROR_ENV = "MODELYARD_TEST_SERVICES_ERROR"
START_TIMEOUT_S = 60.0


class ServiceUnavailable(RuntimeError):
    """A service the tests need is not running and could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(url: str) -> bool:
    """Does something speak the URL's protocol there (a real handshake, not just an open port)?"""
    parsed = urlparse(url)
    if parsed.scheme.startswith("redis"):
        return _redis_pong(parsed.hostname or "127.0.0.1", parsed.port or 6379)
    return _postgres_answers(url)


def _redis_pong(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _postgres_answers(url: str) -> bool:
    import asyncpg

    async def probe() -> bool:
        conn = await asyncpg.connect(url, timeout=2.0)
        await conn.close()
        return True

    try:
        return asyncio.run(probe())
    except Exception:  # refused, timed out, no such database: not usable
        return False


def _wait_until(check: object, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise ServiceUnavailable(f"{what} did not come up within {START_TIMEOUT_S:.0f}s\n{tail}")


@dataclass
class PrivateServices:
    """Services this test session started itself; :meth:`stop` ends them and removes their data."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="modelyard-services-")))
    stops: list[list[str]] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("Redis is not running and redis-server is not installed (make test-services installs it)")
        port = free_port()
        log = self.root / "redis.log"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.root)]
        self.processes.append(subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT))
        _wait_until(lambda: _redis_pong("127.0.0.1", port), "a private Redis", log)
        return f"redis://127.0.0.1:{port}/0"

    def start_postgres(self) -> str:
        bindir = _postgres_bindir()
        data, log, port = self.root / "pgdata", self.root / "postgres.log", free_port()
        run_as = _unprivileged_prefix(self.root)
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        options = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(int(START_TIMEOUT_S))]
        subprocess.run([*pg_ctl, "-o", options, "start"], check=True, capture_output=True)
        self.stops.append([*pg_ctl, "-m", "immediate", "stop"])
        base = f"postgresql://postgres@127.0.0.1:{port}"
        _wait_until(lambda: _postgres_answers(f"{base}/postgres"), "a private PostgreSQL", log)
        subprocess.run([*run_as, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "test"], check=True, capture_output=True)
        return f"{base}/test"

    def stop(self) -> None:
        for command in self.stops:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(command, capture_output=True, timeout=60)
        for process in self.processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServiceUnavailable("PostgreSQL is not running and its server is not installed (make test-services installs it)")
    return Path(initdb).resolve().parent


def _unprivileged_prefix(root: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user, which must own its directory."""
    if os.geteuid() != 0:
        return []
    shutil.chown(root, "postgres")
    return ["runuser", "-u", "postgres", "--"]


def ensure_services(env: dict[str, str] | os._Environ[str]) -> PrivateServices | None:
    """Point ``env`` at a usable PostgreSQL and Redis, starting private ones when needed."""
    private: PrivateServices | None = None
    wanted = ((DATABASE_ENV, DEFAULT_DATABASE_URL, "start_postgres"), (REDIS_ENV, DEFAULT_REDIS_URL, "start_redis"))
    try:
        for name, default, start in wanted:
            url = env.get(name) or default
            if reachable(url):
                env[name] = url
                continue
            private = private or PrivateServices()
            env[name] = getattr(private, start)()
    except BaseException:
        if private is not None:
            private.stop()
        raise
    return private


def service_url(name: str) -> str:
    """The URL a test must use for a service; fails (never skips) when the session could not provide it."""
    url = os.environ.get(name)
    if not url:
        raise ServiceUnavailable(f"{name} is not set: {os.environ.get(ERROR_ENV, 'the test services were not started')}")
    return url


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server at ``url`` (dropped afterwards): a test's own schema and rows."""
    import asyncpg

    name = f"modelyard_{os.getpid()}_{os.urandom(4).hex()}"
    admin = urlparse(url)._replace(path="/postgres").geturl()

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield urlparse(url)._replace(path=f"/{name}").geturl()
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
