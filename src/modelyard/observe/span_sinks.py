"""Where finished spans go: OTLP/HTTP in batches (the server's), or the OpenTelemetry SDK (tests, embedding apps).

:class:`OtlpHttpSink` keeps each finished request's span builder in a
bounded queue and, every ``flush_s`` (sooner when ``max_batch`` requests are
waiting), builds, encodes and posts the spans as OTLP/JSON from a task on the
event loop: the request path only appends, and the building happens while
the loop would otherwise wait (bench/gateway.py --tracing measured building
and encoding at the end of each request as added latency for the next one).
An export that fails is logged (at most once a minute) and dropped, as the
SDK's batch processor does, and a full queue drops new requests' spans rather
than grow. ``aclose`` exports what is left.
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

from modelyard.observe.spans import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, SpanBuilder, encode_span, otlp_body
from modelyard.tasks import stop_task

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
        self.pending: list[SpanBuilder] = []  # finished requests, their spans not built yet
        self.buffer: list[bytes] = []  # spans encoded, waiting for a post
        self.exported = 0
        self.dropped = 0  # spans whose export failed
        self.dropped_requests = 0  # requests whose spans found the queue full
        self.client = httpx.AsyncClient(timeout=timeout_s)
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._warned_at = -float("inf")

    def emit(self, build: SpanBuilder) -> None:
        """Queue one request's spans, built at the next export (``max_queue`` requests at most)."""
        if len(self.pending) >= self.max_queue:
            self.dropped_requests += 1
            self._warn(f"the span queue is full ({self.max_queue} requests); spans are dropped until the collector catches up")
            return
        self.pending.append(build)
        if len(self.pending) >= self.max_batch:
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
        builders, self.pending = self.pending, []
        self.buffer += [encode_span(record) for build in builders for record in build()]
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
        await stop_task(self.task)
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

    def emit(self, build: SpanBuilder) -> None:
        """Build and hand over one request's spans at once (the SDK's processors batch them)."""
        records = build()
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
