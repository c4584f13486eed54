"""Shared benchmark plumbing: processes, ports, percentiles, result files."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], log: Path, ready_url: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m modelyard.cli ARGS`` and wait until ``ready_url`` answers 200."""
    process = subprocess.Popen([sys.executable, "-m", "modelyard.cli", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=ENV | (env or {}), cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited early; see {log}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{args[0]} not ready in {timeout}s; see {log}")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def commit() -> str:
    """The commit measured, with ``+dirty`` when the working tree differs from it (a number from uncommitted code says so)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    # results files written by an earlier benchmark of the same run are not code
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "bench", ":(exclude)bench/results")
    return head + ("+dirty" if dirty else "")


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/NAME.json`` with the commit it measured and when."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamped = {"commit": commit(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} | data
    path.write_text(json.dumps(stamped, indent=2, sort_keys=True) + "\n")
    return path


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows)
