"""The access log: one JSON line per request, written in blocks.

Through ``logging``, each line built a ``LogRecord``, took the handler's lock,
formatted, and wrote and flushed the stream: one ``write`` system call per
request, about a tenth of the request path in a cProfile under load
(docs/performance.md, "The access log in blocks", has what it saved). Here a line
is one ``orjson.dumps`` appended to a buffer; the buffer goes out when it
reaches ``FLUSH_BYTES``, ``flush_s`` after its first line, and on ``close``
(nginx's ``access_log ... buffer= flush=`` does the same). The cost: a process
killed with SIGKILL loses at most ``flush_s`` of lines; ``flush_s = 0`` writes
every line at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import IO, Any

import orjson

FLUSH_BYTES = 64 * 1024

Writer = Callable[[bytes], object]


def stream_writer(stream: IO[str]) -> Writer:
    """Writes bytes to a text stream's binary buffer (stderr), flushing each block."""
    binary = getattr(stream, "buffer", None)

    def write(data: bytes) -> None:
        stream.flush()  # what `logging` wrote to the text layer goes first
        if binary is not None:
            binary.write(data)
            binary.flush()
        else:
            stream.write(data.decode())
            stream.flush()

    return write


class AccessLog:
    """Buffered JSON lines; ``line`` never blocks and never raises, a failing stream drops its block."""

    def __init__(self, write: Writer, flush_s: float, flush_bytes: int = FLUSH_BYTES) -> None:
        """``flush_s``: the longest a line waits in the buffer (``server.access_log_flush_s``; 0: no buffering)."""
        self._write = write
        self._flush_s = flush_s
        self._flush_bytes = flush_bytes
        self._pending = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.dropped_blocks = 0

    def line(self, fields: dict[str, Any]) -> None:
        """Adds one line; it is written within ``flush_s`` (at once outside an event loop)."""
        self._pending += orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        if self._flush_s <= 0 or len(self._pending) >= self._flush_bytes:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._flush_s, self.flush)

    def flush(self) -> None:
        """Writes what is buffered now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        block = bytes(self._pending)
        self._pending.clear()
        try:
            self._write(block)
        except (OSError, ValueError):  # a closed or broken stream: the request must not fail for its log line
            self.dropped_blocks += 1

    def close(self) -> None:
        """Writes the rest; call it after the last request."""
        self.flush()
