"""OpenTelemetry traces: a server span per HTTP request, a GenAI client span per model call, a span per attempt.

Spans follow the OpenTelemetry GenAI semantic conventions: the call span is
``{gen_ai.operation.name} {gen_ai.request.model}`` (kind CLIENT) with the
provider, requested and answering model, token usage, finish reasons, the
session as ``gen_ai.conversation.id`` and ``error.type`` on failure; each try
(retries, failover, hedges) is a child span, and a cache hit is one too. The
client's W3C ``traceparent`` makes the server span part of the client's trace.

Spans are built when the request is over, from what the pipeline recorded
(start times, attempts, usage), so tracing adds no work on the request path
itself; a batch processor exports them over OTLP/HTTP off the event loop.
Prompts are not put in spans unless ``capture_content`` is on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from modelyard.config import FleetConfig
from modelyard.pipeline.types import Attempt, Request

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
PROVIDERS = {"openai": "openai", "llamacpp": "llama.cpp", "llamacpp_server": "llama.cpp", "sentence-transformers": "sentence_transformers"}
TRACES_PATH = "/v1/traces"


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


def exporting_provider(options: TracingOptions) -> TracerProvider:
    """A tracer provider that batches spans to the OTLP/HTTP endpoint (the caller shuts it down: that flushes)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": options.service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=options.endpoint)))
    return provider


class Tracing:
    """An access-middleware observer that turns each finished request into its spans."""

    def __init__(
        self, provider: TracerProvider, config: FleetConfig, capture_content: bool = False, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracer = provider.get_tracer("modelyard")
        self.capture_content = capture_content
        self.clock = clock  # the dispatcher's: what attempt start times are measured on
        self.providers = {d.name: PROVIDERS.get(d.backend, d.backend) for m in config.models for d in m.deployments}
        self.propagator = TraceContextTextMapPropagator()

    def observe(self, state: dict[str, Any], status: int, seconds: float) -> None:
        end_ns = time.time_ns()
        start_ns = end_ns - int(seconds * 1e9)
        path = state.get("path") or ""
        parent = self.propagator.extract(state["trace_headers"]) if state.get("trace_headers") else None
        server = self.tracer.start_span(
            f"{state.get('method') or 'POST'} {path}", context=parent, kind=SpanKind.SERVER, start_time=start_ns,
            attributes={"http.request.method": state.get("method") or "", "url.path": path, "http.response.status_code": status,
                        "modelyard.request_id": state.get("request_id") or ""},
        )
        request = state.get("request")
        if isinstance(request, Request):
            self._call(request, state, status, server, start_ns, end_ns)
        if status >= 500 or status == 499:
            server.set_status(StatusCode.ERROR)
            server.set_attribute("error.type", state.get("error") or str(status))
        server.end(end_time=end_ns)

    def _call(self, request: Request, state: dict[str, Any], status: int, server: Span, start_ns: int, end_ns: int) -> None:
        operation = OPERATIONS.get(request.operation, request.operation)
        span = self.tracer.start_span(
            f"{operation} {request.model}", context=set_span_in_context(server), kind=SpanKind.CLIENT, start_time=start_ns,
            attributes=self._call_attributes(request, state, operation),
        )
        if status >= 400:
            span.set_status(StatusCode.ERROR)
            span.set_attribute("error.type", state.get("error") or str(status))
        context = set_span_in_context(span)
        if request.cache == "hit":
            hit = self.tracer.start_span("cache hit", context=context, kind=SpanKind.INTERNAL, start_time=start_ns,
                                         attributes={"modelyard.cache": "hit", "modelyard.cache.saved_usd": request.saved_usd})
            hit.end(end_time=end_ns)
        wall_offset_ns = time.time_ns() - int(self.clock() * 1e9)
        for number, attempt in enumerate(request.attempts, 1):
            self._attempt(attempt, number, operation, context, wall_offset_ns, end_ns)
        span.end(end_time=end_ns)

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
            "gen_ai.response.finish_reasons": tuple(request.finish_reasons) or None, "modelyard.deployment": deployment or None,
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

    def _attempt(self, attempt: Attempt, number: int, operation: str, context: Any, wall_offset_ns: int, end_ns: int) -> None:
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
        span = self.tracer.start_span(f"{operation} {attempt.model}", context=context, kind=SpanKind.CLIENT, start_time=start, attributes=attributes)
        if attempt.outcome not in ("ok", "pending"):
            span.set_attribute("error.type", attempt.outcome)
            if attempt.outcome not in ("hedge-lost", "cancelled"):
                span.set_status(StatusCode.ERROR, attempt.error or attempt.outcome)
        span.end(end_time=max(end, start))

