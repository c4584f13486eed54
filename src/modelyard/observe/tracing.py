"""OpenTelemetry traces: a server span per HTTP request, a GenAI client span per model call, a span per attempt.

Spans follow the OpenTelemetry GenAI semantic conventions: the call span is
``{gen_ai.operation.name} {gen_ai.request.model}`` (kind CLIENT) with the
provider, requested and answering model, token usage, finish reasons, the
session as ``gen_ai.conversation.id`` and ``error.type`` on failure; each try
(retries, failover, hedges) is a child span, and a cache hit is one too. The
client's W3C ``traceparent`` makes the server span part of the client's trace
(and a client that did not sample its trace gets no spans from us either).

Spans are built when the response has gone out, from what the pipeline
recorded (start times, attempts, usage), as plain records
(:mod:`modelyard.observe.spans`) handed to a sink: OTLP/HTTP export in
batches, or the OpenTelemetry SDK. Prompts are not put in spans unless
``capture_content`` is on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from modelyard.config import FleetConfig
from modelyard.observe.spans import (
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    SpanBuilder,
    SpanRecord,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)
from modelyard.pipeline.types import Attempt, Request

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
PROVIDERS = {"openai": "openai", "llamacpp": "llama.cpp", "llamacpp_server": "llama.cpp", "sentence-transformers": "sentence_transformers"}
TRACES_PATH = "/v1/traces"
QUIET_OUTCOMES = ("ok", "pending", "hedge-lost", "cancelled")  # not errors: the outcome attribute says what happened


@dataclass(frozen=True, slots=True)
class TracingOptions:
    """Where spans go (an OTLP/HTTP traces URL) and whether prompts go with them."""

    endpoint: str
    capture_content: bool = False
    service_name: str = "modelyard"


def tracing_options(flag: str | None, capture: bool, environ: Mapping[str, str]) -> TracingOptions | None:
    """From ``--otlp-endpoint`` or the standard variables; None when none is set (tracing off).

    ``--otlp-endpoint`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` are base URLs (``/v1/traces`` is added, as the
    OTLP exporter specification says); ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as it is.
    """
    if flag:
        endpoint = flag.rstrip("/") + TRACES_PATH
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + TRACES_PATH
    else:
        return None
    opted = capture or environ.get(CAPTURE_ENV, "").lower() in ("1", "true", "yes")
    return TracingOptions(endpoint, opted, environ.get("OTEL_SERVICE_NAME") or "modelyard")


class SpanSink(Protocol):
    def emit(self, build: SpanBuilder) -> None:
        """Take one request's spans as a function that returns them, parents before children.

        The sink may call ``build`` later, off the request path (no I/O, and no span building, on the caller's path).
        """
        ...


class Tracing:
    """An access-middleware observer that turns each finished request into its spans."""

    def __init__(self, sink: SpanSink, config: FleetConfig, capture_content: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.capture_content = capture_content
        self.clock = clock  # the dispatcher's: what attempt start times are measured on
        self.providers = {d.name: PROVIDERS.get(d.backend, d.backend) for m in config.models for d in m.deployments}

    def observe(self, state: dict[str, Any], status: int, seconds: float) -> None:
        """Hand the sink this finished request's spans, to be built when it exports (the request's state no longer changes)."""
        self.sink.emit(partial(self.spans, state, status, seconds, time.time_ns(), self._wall_offset_ns()))

    def _wall_offset_ns(self) -> int:
        """Wall-clock minus the dispatcher's clock, now: turns attempt start times into span times."""
        return time.time_ns() - int(self.clock() * 1e9)

    def spans(self, state: dict[str, Any], status: int, seconds: float, end_ns: int, wall_offset_ns: int | None = None) -> list[SpanRecord]:
        """The request's spans: server, then the model call and its attempts (empty when the client's trace is not sampled)."""
        parent = parse_traceparent(state["trace_headers"]) if state.get("trace_headers") else None
        if parent is not None and not parent.sampled:
            return []
        start_ns = end_ns - int(seconds * 1e9)
        path = state.get("path") or ""
        method = state.get("method") or "POST"
        server = SpanRecord(
            f"{method} {path}", KIND_SERVER, parent.trace_id if parent else new_trace_id(), new_span_id(), parent.span_id if parent else None,
            start_ns, end_ns, {"http.request.method": method, "url.path": path, "http.response.status_code": status,
                               "modelyard.request_id": state.get("request_id") or ""},
            trace_state=parent.trace_state if parent else "", remote_parent=parent is not None,
        )
        if status >= 500 or status == 499:
            server.fail(state.get("error") or str(status))
        records = [server]
        request = state.get("request")
        if isinstance(request, Request):
            offset = self._wall_offset_ns() if wall_offset_ns is None else wall_offset_ns
            records += self._call(request, state, status, server, end_ns, offset)
        return records

    def _call(self, request: Request, state: dict[str, Any], status: int, server: SpanRecord, end_ns: int, wall_offset_ns: int) -> list[SpanRecord]:
        operation = OPERATIONS.get(request.operation, request.operation)
        trace = server.trace_id
        call = SpanRecord(f"{operation} {request.model}", KIND_CLIENT, trace, new_span_id(), server.span_id, server.start_ns, end_ns,
                          self._call_attributes(request, state, operation), trace_state=server.trace_state)
        if status >= 400:
            call.fail(state.get("error") or str(status))
        records = [call]
        if request.cache == "hit":
            records.append(SpanRecord("cache hit", KIND_INTERNAL, trace, new_span_id(), call.span_id, server.start_ns, end_ns,
                                      {"modelyard.cache": "hit", "modelyard.cache.saved_usd": request.saved_usd}))
        for number, attempt in enumerate(request.attempts, 1):
            records.append(self._attempt(attempt, number, operation, call, wall_offset_ns, end_ns))
        return records

    def _call_attributes(self, request: Request, state: dict[str, Any], operation: str) -> dict[str, Any]:
        answered = next((a for a in request.attempts if a.outcome == "ok"), None)
        deployment = answered.deployment if answered else (request.deployment or "")
        usage = state.get("usage") or request.usage()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.request.model": request.model,
            "gen_ai.provider.name": self.providers.get(deployment, "modelyard"),
            "gen_ai.usage.input_tokens": usage.prompt_tokens, "gen_ai.usage.output_tokens": usage.completion_tokens,
            "modelyard.tenant": request.tenant, "modelyard.workload": request.workload, "modelyard.attempts": len(request.attempts),
            "modelyard.cost_usd": float(state.get("cost_usd") or 0.0),
        }
        optional = {
            "gen_ai.response.model": state.get("served_model") or request.served_model, "gen_ai.conversation.id": request.session,
            "gen_ai.response.finish_reasons": tuple(a.finish_reason for a in request.attempts if a.outcome == "ok" and a.finish_reason) or None, "modelyard.deployment": deployment or None,
            "modelyard.route": request.route_reason or None, "modelyard.cache": request.cache or None,
        }
        if request.call is not None:
            sampling = request.call.sampling
            optional |= {"gen_ai.request.max_tokens": sampling.max_tokens, "gen_ai.request.temperature": sampling.temperature,
                         "gen_ai.request.top_p": sampling.top_p, "gen_ai.request.seed": sampling.seed}
            if self.capture_content:
                optional["gen_ai.input.messages"] = json.dumps(list(request.call.messages) or [{"role": "user", "content": request.call.prompt}])
        attributes.update({k: v for k, v in optional.items() if v is not None})
        return attributes

    def _attempt(self, attempt: Attempt, number: int, operation: str, call: SpanRecord, wall_offset_ns: int, end_ns: int) -> SpanRecord:
        start = int(attempt.started * 1e9) + wall_offset_ns
        end = start + int(attempt.busy_s * 1e9) if attempt.busy_s else end_ns
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.request.model": attempt.model,
            "gen_ai.provider.name": self.providers.get(attempt.deployment, "modelyard"),
            "modelyard.deployment": attempt.deployment, "modelyard.attempt": number, "modelyard.attempt.outcome": attempt.outcome,
        }
        if attempt.usage is not None:
            attributes |= {"gen_ai.usage.input_tokens": attempt.usage.prompt_tokens, "gen_ai.usage.output_tokens": attempt.usage.completion_tokens}
        if attempt.ttft_s is not None:
            attributes["modelyard.ttft_s"] = attempt.ttft_s
        if attempt.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = (attempt.finish_reason,)
        span = SpanRecord(f"{operation} {attempt.model}", KIND_CLIENT, call.trace_id, new_span_id(), call.span_id, start, max(end, start), attributes)
        if attempt.outcome not in QUIET_OUTCOMES:
            span.fail(attempt.outcome, attempt.error or attempt.outcome)
        return span
