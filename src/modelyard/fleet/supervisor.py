"""Supervise worker processes that speak JSON lines on stdio.

A :class:`SupervisedProcess` starts its command, waits for ``{"ev": "ready"}``,
routes each later event to the subscriber of its ``id``, answers health pings,
and restarts the process (with backoff) whenever it dies or stops answering.
Subscribers of a dying process get :data:`PROCESS_DIED` so no request hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("modelyard.supervisor")

PROCESS_DIED: dict[str, Any] = {"ev": "died"}
STREAM_LIMIT = 16 * 1024 * 1024


class ProcessState(enum.IntEnum):
    """Lifecycle of one supervised process, in order."""

    STARTING = 1
    READY = 2
    RESTARTING = 3
    STOPPING = 4
    STOPPED = 5


@dataclass(frozen=True, slots=True)
class SupervisionPolicy:
    """How patiently a process is started, probed and restarted."""

    start_timeout_s: float = 120.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 20.0
    restart_backoff_s: float = 0.5
    max_restart_backoff_s: float = 30.0
    stop_grace_s: float = 5.0


class StartFailed(RuntimeError):
    """The process exited or timed out before saying it was ready."""


class SupervisedProcess:
    """One restartable worker process and the event routing around it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], policy: SupervisionPolicy) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.policy = policy
        self.state = ProcessState.STOPPED
        self.restarts = 0
        self.ready_info: dict[str, Any] = {}
        self.last_error = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._subscribers: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._pong = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._state_changed = asyncio.Condition()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "state": self.state.name.lower(), "restarts": self.restarts, "last_error": self.last_error}

    async def start(self) -> None:
        """Start and wait until ready; later deaths are handled in the background."""
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def _spawn(self) -> None:
        await self._set_state(ProcessState.STARTING)
        self._ready.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            limit=STREAM_LIMIT,
            start_new_session=True,  # a terminal's Ctrl-C goes to the supervisor, which stops workers in order
        )
        reader = asyncio.create_task(self._read(self._proc))
        waiter = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({reader, waiter}, timeout=self.policy.start_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            await self._kill()
            reader.cancel()
            reason = self.last_error or f"exit code {self._proc.returncode}"
            raise StartFailed(f"worker {self.name} did not become ready: {reason}")
        self._reader = reader
        await self._set_state(ProcessState.READY)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("ev")
            if kind == "ready":
                self.ready_info = event
                self._ready.set()
            elif kind == "fatal":
                self.last_error = str(event.get("message", "fatal error"))
            elif kind == "pong":
                self._pong.set()
            else:
                queue = self._subscribers.get(event.get("id", ""))
                if queue is not None:
                    queue.put_nowait(event)

    async def _supervise(self) -> None:
        backoff = self.policy.restart_backoff_s
        while self.state < ProcessState.STOPPING:
            assert self._proc is not None
            health = asyncio.create_task(self._health_loop())
            code = await self._proc.wait()
            health.cancel()
            self._fail_subscribers()
            if self.state >= ProcessState.STOPPING:
                break
            self.last_error = f"exited with code {code}"
            log.warning("worker %s %s; restarting", self.name, self.last_error)
            await self._set_state(ProcessState.RESTARTING)
            while self.state < ProcessState.STOPPING:
                await asyncio.sleep(backoff)
                try:
                    await self._spawn()
                    self.restarts += 1
                    backoff = self.policy.restart_backoff_s
                    break
                except (StartFailed, OSError) as exc:
                    self.last_error = str(exc)
                    backoff = min(backoff * 2, self.policy.max_restart_backoff_s)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.ping_interval_s)
            self._pong.clear()
            try:
                await self.send({"op": "ping"})
                await asyncio.wait_for(self._pong.wait(), self.policy.ping_timeout_s)
            except (TimeoutError, ConnectionError):
                self.last_error = "health check failed"
                log.warning("worker %s failed its health check; killing it", self.name)
                await self._kill()
                return

    def _fail_subscribers(self) -> None:
        for queue in self._subscribers.values():
            queue.put_nowait(PROCESS_DIED)

    async def _set_state(self, state: ProcessState) -> None:
        async with self._state_changed:
            self.state = state
            self._state_changed.notify_all()

    async def wait_state_change(self) -> None:
        async with self._state_changed:
            await self._state_changed.wait()

    def subscribe(self, request_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers[request_id] = queue
        return queue

    def unsubscribe(self, request_id: str) -> None:
        self._subscribers.pop(request_id, None)

    async def send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise ConnectionError(f"worker {self.name} is not running")
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        await proc.stdin.drain()

    async def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop for good: close stdin (the worker exits), then TERM, then KILL."""
        await self._set_state(ProcessState.STOPPING)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            deadline = time.monotonic() + self.policy.stop_grace_s
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), 2.0)
            await self._kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_subscribers()
        await self._set_state(ProcessState.STOPPED)
