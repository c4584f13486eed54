"""Where finished spans go: OTLP/HTTP in batches (the server's), or the OpenTelemetry SDK (tests, embedding apps).

:class:`OtlpHttpSink` keeps spans in a bounded buffer and posts them as
OTLP/JSON every ``flush_s`` (sooner when ``max_batch`` are waiting) from a
task on the event loop; an export that fails is logged (at most once a minute)
and dropped, as the SDK's batch processor does, and a full buffer drops new
spans rather than grow. ``aclose`` exports what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from modelyard.observe.spans import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, SpanRecord, encode_span, otlp_body

log = logging.getLogger("modelyard.tracing")
WARN_EVERY_S = 60.0


class OtlpHttpSink:
    def __init__(
        self, endpoint: str, resource: dict[str, str], version: str, flush_s: float = 1.0, max_batch: int = 512, max_queue: int = 8192,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.resource = resource
        self.version = version
        self.flush_s = flush_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.buffer: list[bytes] = []  # spans encoded as they come
        self.exported = 0
        self.dropped = 0
        self.client = httpx.AsyncClient(timeout=timeout_s)
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._warned_at = -float("inf")

    def emit(self, records: list[SpanRecord]) -> None:
        if len(self.buffer) + len(records) > self.max_queue:
            self.dropped += len(records)
            self._warn(f"the span buffer is full ({self.max_queue}); spans are dropped until the collector catches up")
            return
        self.buffer += [encode_span(r) for r in records]
        if len(self.buffer) >= self.max_batch:
            self._wake.set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="otlp-export")

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self.buffer:
            batch, self.buffer = self.buffer[: self.max_batch], self.buffer[self.max_batch:]
            try:
                response = await self.client.post(self.endpoint, content=otlp_body(batch, self.resource, self.version),
                                                  headers={"content-type": "application/json"})
                response.raise_for_status()
                self.exported += len(batch)
            except httpx.HTTPError as exc:
                self.dropped += len(batch)
                self._warn(f"cannot export spans to {self.endpoint} ({type(exc).__name__}: {exc}); {len(batch)} dropped")

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.flush()
        await self.client.aclose()

    def _warn(self, message: str) -> None:
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            log.warning(message)


KINDS = {KIND_SERVER: SpanKind.SERVER, KIND_CLIENT: SpanKind.CLIENT}


class SdkSink:
    """Spans re-made through an OpenTelemetry SDK tracer provider (its processors and exporters decide the rest).

    The SDK gives spans its own ids; the structure (parents, the client's trace) is kept.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("modelyard")

    def emit(self, records: list[SpanRecord]) -> None:
        made: dict[str, Span] = {}
        for record in records:
            if record.parent_id in made:
                context = set_span_in_context(made[record.parent_id])
            elif record.remote_parent and record.parent_id:
                remote = SpanContext(int(record.trace_id, 16), int(record.parent_id, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED),
                                     trace_state=TraceState.from_header([record.trace_state]) if record.trace_state else None)
                context = set_span_in_context(NonRecordingSpan(remote))
            else:
                context = None
            span = self.tracer.start_span(record.name, context=context, kind=KINDS.get(record.kind, SpanKind.INTERNAL),
                                          attributes=record.attributes, start_time=record.start_ns)
            if record.status == STATUS_ERROR:
                span.set_status(Status(StatusCode.ERROR, record.status_message or None))
            made[record.span_id] = span
        for record in reversed(records):
            made[record.span_id].end(end_time=record.end_ns)
