"""CPU per request of making and encoding a request's spans: modelyard's records vs the OpenTelemetry SDK.

    .venv/bin/python bench/span_cost.py [--requests 3000] [--repeats 5]

The same finished request (one chat call, one answered attempt: a server, a
GenAI call and an attempt span) is turned into spans and OTLP bytes by
``Tracing`` with modelyard's sinks, and by the same ``Tracing`` re-made through
the SDK (``SdkSink``) with a ``SimpleSpanProcessor`` whose exporter runs the
SDK's OTLP protobuf encoder. Also the SDK without any encoding (the floor of the
SDK path). Median and spread of µs per request over repeats; writes
bench/results/span_cost.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, table, write_result  # noqa: E402

from modelyard.config import parse_config  # noqa: E402
from modelyard.observe.span_sinks import SdkSink  # noqa: E402
from modelyard.observe.spans import SpanRecord, encode_span, otlp_body  # noqa: E402
from modelyard.observe.tracing import Tracing  # noqa: E402
from modelyard.pipeline.types import Attempt, Request  # noqa: E402
from modelyard.protocol import ModelCall, Sampling, Usage  # noqa: E402

FLEET = parse_config({"models": {"fake": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}}})


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Protobuf(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS


class Encoded:
    """What OtlpHttpSink does before the network: each span to OTLP/JSON bytes, then the batch body."""

    def __init__(self) -> None:
        self.buffer: list[bytes] = []

    def emit(self, records: list[SpanRecord]) -> None:
        self.buffer += [encode_span(r) for r in records]
        if len(self.buffer) >= 512:
            otlp_body(self.buffer, {"service.name": "modelyard"}, "bench")
            self.buffer = []


def finished_state() -> dict[str, Any]:
    call = ModelCall(kind="chat", model="fake", messages=({"role": "user", "content": "hello there"},), sampling=Sampling(max_tokens=16))
    request = Request("chat", "fake", "req-1", call=call, tenant="bench", served_model="fake", route_reason="requested")
    request.attempts = [Attempt("fake", "fake/0", time.monotonic() - 0.05, outcome="ok", ttft_s=0.05, usage=Usage(2, 16), busy_s=0.05, finish_reason="length")]
    return {"path": "/v1/chat/completions", "method": "POST", "request_id": "req-1", "request": request, "usage": Usage(2, 16), "cost_usd": 0.0}


def sdk(exporter: SpanExporter) -> Callable[[], Any]:
    def make() -> Any:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return SdkSink(provider)

    return make


def per_request_us(make_sink: Callable[[], Any], requests: int) -> float:
    tracing = Tracing(make_sink(), FLEET)
    states = [finished_state() for _ in range(requests)]
    started = time.process_time()
    for state in states:
        tracing.observe(state, 200, 0.05)
    return (time.process_time() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    paths = {"modelyard records + OTLP/JSON": Encoded, "SDK spans, no encoding": sdk(Discard()), "SDK spans + OTLP protobuf": sdk(Protobuf())}
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, make in paths.items():  # interleaved, so drift hits every path alike
            runs[name].append(per_request_us(make, args.requests))
    summary = {name: {"median_us": median(v), "range_us": [min(v), max(v)]} for name, v in runs.items()}
    ours = summary["modelyard records + OTLP/JSON"]["median_us"]
    rows = [("path", "µs CPU per request (median)", "range", "vs modelyard")]
    rows += [(name, f"{s['median_us']:.1f}", f"{s['range_us'][0]:.1f}-{s['range_us'][1]:.1f}", f"{s['median_us'] / ours:.1f}x") for name, s in summary.items()]
    print(table(rows))
    path = write_result("span_cost", {"machine": machine(), "requests": args.requests, "repeats": args.repeats, "spans_per_request": 3, "runs": runs, "summary": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
