"""Finished spans as plain records, the W3C trace context, and their OTLP/JSON encoding.

modelyard builds a request's spans when the request is over, from what the
pipeline recorded, so it needs no live span objects: a span is a record with
its ids, times and attributes, encoded with orjson in OTLP/JSON, which every
OTLP/HTTP receiver accepts (ids in hex, 64-bit integers as strings, as the
OTLP specification says). The OpenTelemetry SDK's spans and protobuf encoder
cost several times more CPU per request (bench/span_cost.py); the SDK path
stays available as :class:`modelyard.observe.span_sinks.SdkSink`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


@dataclass(frozen=True, slots=True)
class TraceParent:
    """The client's W3C trace context: its trace, its span (our server span's parent), sampled or not."""

    trace_id: str
    span_id: str
    sampled: bool
    trace_state: str = ""


def parse_traceparent(headers: dict[str, str]) -> TraceParent | None:
    """``traceparent`` (and ``tracestate``) as the W3C Trace Context spec reads them; None when absent or invalid."""
    match = TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags, 16) & 1), headers.get("tracestate", ""))


def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


@dataclass(slots=True)
class SpanRecord:
    """One finished span."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str | None  # None: a root span
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status: int = STATUS_UNSET
    status_message: str = ""
    trace_state: str = ""
    remote_parent: bool = False  # the parent is the client's span

    def fail(self, error_type: str, message: str = "") -> None:
        self.attributes["error.type"] = error_type
        self.status, self.status_message = STATUS_ERROR, message


SpanBuilder = Callable[[], list[SpanRecord]]  # one request's spans, built when they are exported


def _array(values: Any) -> dict[str, Any]:
    return {"arrayValue": {"values": [_value(v) for v in values]}}


ENCODERS: dict[type, Any] = {
    str: lambda v: {"stringValue": v}, bool: lambda v: {"boolValue": v}, int: lambda v: {"intValue": str(v)},
    float: lambda v: {"doubleValue": v}, tuple: _array, list: _array,
}


def _value(value: Any) -> dict[str, Any]:
    encode = ENCODERS.get(type(value))
    return encode(value) if encode is not None else {"stringValue": str(value)}  # type: ignore[no-any-return]


def _attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in values.items()]


def _span(r: SpanRecord) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": r.trace_id, "spanId": r.span_id, "name": r.name, "kind": r.kind,
        "startTimeUnixNano": str(r.start_ns), "endTimeUnixNano": str(r.end_ns), "attributes": _attributes(r.attributes),
        "status": {"code": r.status, "message": r.status_message} if r.status_message else {"code": r.status},
    }
    if r.parent_id:
        span["parentSpanId"] = r.parent_id
    if r.trace_state:
        span["traceState"] = r.trace_state
    return span


def encode_span(record: SpanRecord) -> bytes:
    """One span as OTLP/JSON (a buffer of these bytes costs the garbage collector nothing, unlike records)."""
    return orjson.dumps(_span(record))


def otlp_body(spans: list[bytes], resource: dict[str, Any], scope_version: str) -> bytes:
    """An OTLP ``ExportTraceServiceRequest`` in OTLP/JSON around spans encoded by :func:`encode_span`."""
    envelope = orjson.dumps({"resourceSpans": [{
        "resource": {"attributes": _attributes(resource)},
        "scopeSpans": [{"scope": {"name": "modelyard", "version": scope_version}, "spans": []}],
    }]})
    head, tail = envelope.split(b'"spans":[]', 1)
    return head + b'"spans":[' + b",".join(spans) + b"]" + tail
