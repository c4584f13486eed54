"""Pure ASGI middleware: request ids and one structured access-log line per request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.observe.access_log import AccessLog

Observer = Callable[[dict[str, Any], int, float], None]
LastByteHook = Callable[[dict[str, Any]], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128


class RequestContextMiddleware:
    """Gives every request an id (the client's ``x-request-id`` if sane) and logs it once when done.

    ``access_log``: where each request's line goes (None: no access log).
    """

    def __init__(
        self, app: ASGIApp, observers: list[Observer] | None = None, before_last_byte: LastByteHook | None = None, access_log: AccessLog | None = None,
    ) -> None:
        self.app = app
        self.observers = observers or []
        self.access_log = access_log
        self.before_last_byte = before_last_byte  # awaited after the observers saw the request, before its last byte goes out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id, trace = _scan_headers(scope)
        request_id = client_id or uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["method"] = scope.get("method")
        if trace:
            state["trace_headers"] = trace  # W3C traceparent/tracestate: the client's trace, for the server span
        started = time.perf_counter()
        status = 0
        logged = False

        def log_once() -> None:
            nonlocal logged
            if not logged:
                logged = True
                if self.access_log is not None:
                    self.access_log.line(access_line(scope, state, status, started))
                state["path"] = scope.get("path")
                seconds = time.perf_counter() - started
                for observe in self.observers:
                    observe(state, status, seconds)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            if last and self.before_last_byte is not None:
                log_once()
                await self.before_last_byte(state)
            await send(message)
            if last:
                log_once()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if status == 0:
                status = 499  # the client went away before any response
            log_once()


TRACE_HEADERS = (b"traceparent", b"tracestate")


def _scan_headers(scope: Scope) -> tuple[str | None, dict[str, str]]:
    """The client's request id (if sane) and its W3C trace context headers, in one pass."""
    request_id: str | None = None
    trace: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            if 0 < len(text) <= MAX_REQUEST_ID and text.isprintable():
                request_id = text
        elif name in TRACE_HEADERS:
            trace[name.decode()] = value.decode("latin-1")
    return request_id, trace


def access_line(scope: Scope, state: dict[str, Any], status: int, started: float) -> dict[str, Any]:
    """One request's access-log fields."""
    usage = state.get("usage")
    return {
        "ts": round(time.time(), 3),
        "request_id": state.get("request_id"),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "model": state.get("requested_model"),
        "served_model": state.get("served_model"),
        "deployment": state.get("deployment"),
        "route": state.get("route_reason"),
        "attempts": state.get("attempts"),
        "workload": state.get("workload"),
        "session": state.get("session"),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "error": state.get("error"),
    }
