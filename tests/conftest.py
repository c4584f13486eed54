"""Shared fixtures: real servers in real processes, on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from . import services

ROOT = Path(__file__).resolve().parent.parent
SERVER_ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0, poll_s: float = 0.05) -> float:
    """Wait for an observable event instead of sleeping a guessed time; returns the seconds it took, fails past ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


@dataclass
class LiveServer:
    """A ``modelyard`` subprocess and where to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self, wanted: Callable[[dict[str, object]], bool], at_least: int = 1, timeout: float = 10.0) -> list[dict[str, object]]:
        """The access-log lines ``wanted`` accepts, once there are ``at_least`` (lines are written in blocks, within ``access_log_flush_s``)."""
        found: list[dict[str, object]] = []

        def written() -> bool:
            lines = [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]
            found[:] = [entry for entry in lines if wanted(entry)]
            return len(found) >= at_least

        wait_until(written, f"the access log has {at_least} wanted line(s)", timeout)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_process(args: list[str], log_path: Path, ready_path: str, port: int, timeout: float = 180.0, env: dict[str, str] | None = None) -> LiveServer:
    log_file = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "modelyard.cli", *args], stdout=log_file, stderr=subprocess.STDOUT, env=SERVER_ENV | (env or {}), cwd=ROOT)
    server = LiveServer(process, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in {timeout}s:\n{server.log()[-3000:]}")


def start_modelyard(tmp: Path, config: Path | None = None, extra: list[str] | None = None, env: dict[str, str] | None = None) -> LiveServer:
    port = free_port()
    args = ["serve", "--port", str(port), *(["--config", str(config)] if config else []), *(extra or [])]
    return start_process(args, tmp / f"modelyard-{port}.log", "/readyz", port, env=env)


def start_fake_upstream(tmp: Path, *flags: str) -> LiveServer:
    port = free_port()
    return start_process(["fake-upstream", "--port", str(port), *flags], tmp / f"fake-{port}.log", "/v1/models", port, timeout=30)


SERVICES_KEY = pytest.StashKey[services.PrivateServices | None]()


def pytest_configure(config: pytest.Config) -> None:
    """PostgreSQL and Redis for the tests that need them: running ones, or private ones started now."""
    try:
        config.stash[SERVICES_KEY] = services.ensure_services(os.environ)
    except (services.ServiceUnavailable, OSError, subprocess.SubprocessError) as exc:
        os.environ[services.ERROR_ENV] = f"{type(exc).__name__}: {exc}"  # the tests that need them fail with this


def pytest_unconfigure(config: pytest.Config) -> None:
    private = config.stash.get(SERVICES_KEY, None)
    if private is not None:
        private.stop()


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``modelyard serve`` on the embedded default fleet: real llama.cpp and MiniLM."""
    server = start_modelyard(tmp_path_factory.mktemp("default"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_fake_upstream(tmp_path_factory.mktemp("fake"))
    yield server
    server.stop()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
