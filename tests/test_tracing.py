"""OpenTelemetry traces: spans from hand-built requests into the SDK's in-memory exporter, then a live server
exporting over OTLP/HTTP to a real receiver on loopback (an HTTP server that reads the OTLP/JSON body into the
protobuf message, so a field the OTLP schema does not have fails the test)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from modelyard.config import parse_config
from modelyard.observe.span_sinks import OtlpHttpSink, SdkSink
from modelyard.observe.spans import parse_traceparent
from modelyard.observe.tracing import Tracing, tracing_options
from modelyard.pipeline.types import Attempt, Request
from modelyard.protocol import ModelCall, Sampling, Usage

from .conftest import LiveServer, free_port, start_modelyard, wait_until, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
FLEET = parse_config({"models": {
    "small": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]},
    "local": {"kind": "chat", "deployments": [{"backend": "llamacpp_server", "model_path": "builtin:smollm2-135m-instruct"}]},
}})


def traced(state: dict[str, Any], status: int = 200, capture: bool = False) -> dict[str, ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    Tracing(SdkSink(provider), FLEET, capture, clock=lambda: 1000.0).observe(state, status, 2.0)
    return {span.name: span for span in exporter.get_finished_spans()}


def agent_request() -> Request:
    call = ModelCall(kind="chat", model="house", messages=({"role": "user", "content": "secret plans"},), sampling=Sampling(max_tokens=64, temperature=0.2))
    request = Request("chat", "house", "req-1", call=call, session="agent-42", tenant="acme", served_model="local", route_reason="rule:tools")
    request.attempts = [
        Attempt("small", "small/0", 998.5, outcome="server_error", error="upstream said 500", busy_s=0.2),
        Attempt("local", "local/0", 998.8, outcome="ok", ttft_s=0.3, usage=Usage(12, 30), busy_s=0.9, finish_reason="stop"),
    ]
    return request


def test_spans_follow_the_genai_conventions_and_join_the_clients_trace() -> None:
    state = {"path": "/v1/chat/completions", "method": "POST", "request_id": "req-1", "trace_headers": {"traceparent": TRACEPARENT},
             "request": agent_request(), "usage": Usage(12, 30), "cost_usd": 0.0012}
    spans = traced(state)
    server, call = spans["POST /v1/chat/completions"], spans["chat house"]
    assert server.kind == SpanKind.SERVER and format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert call.kind == SpanKind.CLIENT and call.parent is not None and call.parent.span_id == server.context.span_id
    attributes = dict(call.attributes or {})
    for key, value in {"gen_ai.operation.name": "chat", "gen_ai.request.model": "house", "gen_ai.response.model": "local",
                       "gen_ai.provider.name": "llama.cpp", "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 30,
                       "gen_ai.response.finish_reasons": ("stop",), "gen_ai.conversation.id": "agent-42", "gen_ai.request.max_tokens": 64,
                       "gen_ai.request.temperature": 0.2, "modelyard.attempts": 2}.items():
        assert attributes[key] == value, key
    assert "gen_ai.input.messages" not in attributes  # no prompt content unless opted in
    failed, answered = spans["chat small"], spans["chat local"]
    assert failed.parent.span_id == call.context.span_id and answered.parent.span_id == call.context.span_id  # type: ignore[union-attr]
    assert failed.attributes["error.type"] == "server_error" and failed.status.status_code == StatusCode.ERROR  # type: ignore[index]
    assert failed.attributes["gen_ai.provider.name"] == "openai" and answered.attributes["modelyard.attempt"] == 2  # type: ignore[index]
    assert answered.end_time - answered.start_time == pytest.approx(0.9e9, rel=1e-6)  # type: ignore[operator]
    assert failed.start_time < answered.start_time  # type: ignore[operator]


def test_prompts_only_when_opted_in_and_errors_are_marked() -> None:
    state = {"path": "/v1/chat/completions", "method": "POST", "request": agent_request(), "error": "rate_limit_exceeded"}
    spans = traced(state, status=429, capture=True)
    call = spans["chat house"]
    assert "secret plans" in call.attributes["gen_ai.input.messages"]  # type: ignore[index, operator]
    assert call.attributes["error.type"] == "rate_limit_exceeded" and call.status.status_code == StatusCode.ERROR  # type: ignore[index]
    assert spans["POST /v1/chat/completions"].parent is None  # no traceparent: a new trace


def test_a_cache_hit_is_a_span_of_its_own() -> None:
    request = Request("chat", "small", "r", call=ModelCall(kind="chat", model="small", messages=()), cache="hit", saved_usd=0.25)
    spans = traced({"path": "/v1/chat/completions", "method": "POST", "request": request})
    assert spans["cache hit"].attributes["modelyard.cache.saved_usd"] == 0.25  # type: ignore[index]
    assert spans["cache hit"].parent.span_id == spans["chat small"].context.span_id  # type: ignore[union-attr]


def test_a_client_that_did_not_sample_gets_no_spans_and_a_bad_traceparent_is_ignored() -> None:
    assert traced({"path": "/v1/models", "method": "GET", "trace_headers": {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-00"}}) == {}
    assert parse_traceparent({"traceparent": f"00-{'0' * 32}-{CLIENT_SPAN}-01"}) is None
    assert parse_traceparent({"traceparent": "garbage"}) is None
    spans = traced({"path": "/v1/models", "method": "GET", "trace_headers": {"traceparent": "00-xyz-01"}})
    assert spans["GET /v1/models"].parent is None


async def test_the_otlp_sink_builds_spans_at_export_not_on_the_request_path() -> None:
    built: list[str] = []
    sink = OtlpHttpSink("http://127.0.0.1:9/v1/traces", {"service.name": "t"}, "0", max_queue=2)
    exporter = Tracing(sink, FLEET, clock=lambda: 1000.0)
    state = {"request_id": "r1", "method": "POST", "path": "/v1/chat/completions", "request": agent_request(), "usage": Usage(12, 30)}
    spans = exporter.spans

    def counting(*args: Any) -> Any:
        built.append("built")
        return spans(*args)

    exporter.spans = counting  # type: ignore[method-assign]
    for _ in range(3):
        exporter.observe(state, 200, 1.0)
    assert built == [] and len(sink.pending) == 2 and sink.dropped_requests == 1  # the third found the queue full
    await sink.flush()  # nothing listens on port 9: the batch is dropped after it was built and encoded
    assert built == ["built", "built"] and sink.pending == [] and sink.dropped == 2 * 4  # server, call and two attempts each
    await sink.client.aclose()


def test_endpoint_from_the_flag_or_the_standard_variables() -> None:
    assert tracing_options(None, False, {}) is None
    assert tracing_options("http://h:4318/", False, {}).endpoint == "http://h:4318/v1/traces"  # type: ignore[union-attr]
    assert tracing_options(None, False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).endpoint == "http://c:4318/v1/traces"  # type: ignore[union-attr]
    only = tracing_options(None, False, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:1/x", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    assert only is not None and only.endpoint == "http://c:1/x" and only.capture_content


# --- a live server exporting to a real OTLP/HTTP receiver ----------------------------------------------

class Receiver(http.server.ThreadingHTTPServer):
    spans: list[Any]


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        assert self.headers["content-type"] == "application/json"
        for resource in body["resourceSpans"]:  # OTLP/JSON ids are hex; the protobuf JSON mapping wants base64
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
        export = json_format.ParseDict(body, ExportTraceServiceRequest())
        assert isinstance(self.server, Receiver)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.server.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", free_port()), ReceiverHandler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


CONFIG = """
models:
  flaky:
    kind: chat
    retry: {{max_attempts: 1}}
    fallbacks: [fake]
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '500'}}}}
  fake:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-text: 'hello there'}}}}
"""


def test_a_live_server_exports_over_otlp_http(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer, receiver: Receiver) -> None:
    tmp = tmp_path_factory.mktemp("tracing")
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", CONFIG.format(url=fake_upstream.url)), ["--otlp-endpoint", endpoint])
    try:
        reply = httpx.post(live.url + "/v1/chat/completions", timeout=60, headers={"traceparent": TRACEPARENT, "x-modelyard-session": "s-9"},
                           json={"model": "flaky", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        assert reply.status_code == 200
        wait_until(lambda: sum(1 for s in receiver.spans if s.trace_id.hex() == TRACE_ID) >= 4, "4 spans of the trace at the receiver")
        untraced = httpx.post(live.url + "/v1/chat/completions", timeout=60, json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
        assert untraced.status_code == 200
    finally:
        live.stop()  # the last spans are exported on the way out
    assert sum(1 for s in receiver.spans if s.trace_id.hex() != TRACE_ID and s.name == "POST /v1/chat/completions") == 1
    ours = [s for s in receiver.spans if s.trace_id.hex() == TRACE_ID]
    server = next(s for s in ours if s.name == "POST /v1/chat/completions")
    call = next(s for s in ours if s.parent_span_id == server.span_id)  # the call span, named after the requested model
    assert server.parent_span_id.hex() == CLIENT_SPAN and call.name == "chat flaky"
    attributes = {a.key: a.value for a in call.attributes}
    assert attributes["gen_ai.response.model"].string_value == "fake" and attributes["gen_ai.conversation.id"].string_value == "s-9"
    assert [v.string_value for v in attributes["gen_ai.response.finish_reasons"].array_value.values] == ["stop"]
    tries = sorted((s for s in ours if s.parent_span_id == call.span_id), key=lambda s: s.start_time_unix_nano)
    assert [t.name for t in tries] == ["chat flaky", "chat fake"]  # the failed try, then the fallback that answered
    errors = [{a.key: a.value.string_value for a in t.attributes}.get("error.type") for t in tries]
    assert errors[0] and errors[1] is None
