"""The Starlette application: routes, error rendering, readiness."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from modelyard.api import parse, render
from modelyard.api.accounting import LedgerRecorder
from modelyard.api.admin_routes import AdminRoutes
from modelyard.api.anthropic_render import error_body as anthropic_error_body
from modelyard.api.anthropic_routes import PREFIX as ANTHROPIC_PREFIX
from modelyard.api.anthropic_routes import AnthropicRoutes
from modelyard.api.auth import AuthMiddleware, Keyring
from modelyard.api.batch_lines import line_executor
from modelyard.api.batch_routes import BatchRoutes
from modelyard.api.dashboard_routes import DashboardRoutes
from modelyard.api.hot_routes import HotRoutes, fixed_post_endpoints
from modelyard.api.middleware import LastByteHook, Observer, RequestContextMiddleware
from modelyard.api.openapi import openapi_document
from modelyard.api.record import note_request
from modelyard.api.responses import JSONResponse
from modelyard.api.responses_routes import ResponsesRoutes
from modelyard.api.session_record import SessionRecorder
from modelyard.api.session_routes import SessionRoutes
from modelyard.api.usage_route import UsageRoute
from modelyard.config import FleetConfig
from modelyard.economics.budget import BudgetBook
from modelyard.errors import InvalidRequest, MethodNotAllowed, ModelNotFound, ModelyardError, NotFound, NotReady, PayloadTooLarge
from modelyard.observe.access_log import AccessLog
from modelyard.observe.metrics import Metrics
from modelyard.pipeline.batch_runner import BatchRunner
from modelyard.pipeline.batches import BatchService
from modelyard.pipeline.dispatch import Dispatcher
from modelyard.pipeline.fleet import FleetRuntime
from modelyard.pipeline.types import Handler, Request, Response
from modelyard.protocol import Usage
from modelyard.store.ledger import LedgerWriter
from modelyard.store.store import Store

log = logging.getLogger("modelyard.api")


def error_response(exc: ModelyardError, body: dict[str, Any] | None = None) -> JSONResponse:
    """``exc`` as a response: OpenAI's error shape unless another API's ``body`` is given."""
    headers = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return JSONResponse(body if body is not None else exc.to_body(), status_code=exc.status, headers=headers)


async def read_body(request: HTTPRequest, limit: int) -> bytes:
    """The body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class Api:
    """The HTTP handlers, bound to one pipeline and fleet."""

    handler: Handler
    fleet: FleetRuntime
    dispatcher: Dispatcher
    config: FleetConfig
    metrics: Metrics
    book: BudgetBook | None = None

    def headers(self, request: HTTPRequest) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.startswith("x-modelyard-") or k == "cache-control"}

    def identify(self, http: HTTPRequest, request: Request) -> Request:
        """The caller's tenant and key policy, set by the auth middleware."""
        state = http.scope["state"]
        request.tenant = state.get("tenant", "default")
        request.policy = state.get("policy")
        return request

    def note(self, http: HTTPRequest, request: Request, response: Response | None = None) -> None:
        note_request(http.scope["state"], request, response)

    def model_headers(self, request: Request, response: Response) -> dict[str, str]:
        return {
            "x-modelyard-model": response.model,
            "x-modelyard-deployment": response.deployment,
            "x-modelyard-route": f"{response.route_reason}; model={response.model}",
            "x-modelyard-attempts": str(len(request.attempts)),
            **({"x-modelyard-cache": "bypass"} if request.operation != "embedding" else {}),
            **request.response_headers,
            **request.ratelimit,
        }

    async def body(self, http: HTTPRequest) -> Any:
        """The request's JSON body (413 past the size limit, 400 when it is not JSON)."""
        return parse.parse_json(await read_body(http, self.config.server.max_body_bytes))

    async def run(self, http: HTTPRequest, request: Request) -> tuple[Response, Any]:
        """Run ``request`` through the pipeline as the caller, up to its first chunk.

        The first chunk is read before any byte is sent: routing, overload and
        early upstream errors keep their status, and failover stays invisible.
        """
        self.identify(http, request)
        self.note(http, request)
        try:
            response = await self.handler(request)
            first = await _first_chunk(response.streams[0])
        finally:
            self.note(http, request)
        self.note(http, request, response)
        return response, first

    async def generate(self, http: HTTPRequest, parser: Callable[..., tuple[Request, bool]], kind: str) -> HTTPResponse:
        request, include_usage = parser(await self.body(http), http.scope["state"]["request_id"], self.headers(http))
        response, first = await self.run(http, request)
        headers = self.model_headers(request, response)
        if request.stream:
            ctx = render.StreamContext(kind, request.request_id, response.model, include_usage=include_usage, record=http.scope["state"])
            events = render.stream_events(ctx, response.streams, first)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers | {"cache-control": "no-cache"})
        choices = await render.collect(response.streams, first)
        self.note(http, request, response)
        http.scope["state"]["usage"] = render.total_usage(choices)
        build = render.chat_body if kind == "chat" else render.completion_body
        return JSONResponse(build(request.request_id, response, choices, int(time.time())), headers=headers)

    async def chat(self, http: HTTPRequest) -> HTTPResponse:
        return await self.generate(http, parse.chat_request, "chat")

    async def completions(self, http: HTTPRequest) -> HTTPResponse:
        return await self.generate(http, parse.completion_request, "completion")

    async def embeddings(self, http: HTTPRequest) -> HTTPResponse:
        body = parse.parse_json(await read_body(http, self.config.server.max_body_bytes))
        request, encoding = parse.embedding_request(body, http.scope["state"]["request_id"], self.headers(http))
        self.identify(http, request)
        self.note(http, request)
        try:
            response = await self.handler(request)
        finally:
            self.note(http, request)
        self.note(http, request, response)
        assert response.embeddings is not None
        http.scope["state"]["usage"] = Usage(response.embeddings.prompt_tokens, 0)
        return JSONResponse(render.embeddings_body(response, response.embeddings, encoding), headers=self.model_headers(request, response))

    def _model_entry(self, name: str, kind: str, description: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "modelyard", "kind": kind, "description": description}

    def _entries(self) -> list[dict[str, Any]]:
        models = [self._model_entry(m.name, m.kind, m.description) for m in self.config.models]
        aliases = [self._model_entry(a.name, "alias", a.description or f"alias of {', '.join(a.targets)}") for a in self.config.aliases]
        return models + aliases

    async def list_models(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse({"object": "list", "data": self._entries()})

    async def get_model(self, http: HTTPRequest) -> HTTPResponse:
        model_id = http.path_params["model_id"]
        for entry in self._entries():
            if entry["id"] == model_id:
                return JSONResponse(entry)
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")

    async def healthz(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(self, http: HTTPRequest) -> HTTPResponse:
        if not self.fleet.ready():
            raise NotReady("the fleet is not ready", retry_after=5.0)
        return JSONResponse({"status": "ready"})

    def snapshot(self) -> dict[str, Any]:
        return {
            "ready": self.fleet.ready(),
            "deployments": self.fleet.describe(),
            "breakers": self.dispatcher.describe(),
            "scheduler": self.dispatcher.gate.describe(),
            "engine_load": self.dispatcher.engine_load.describe(),
            "tasks": len(asyncio.all_tasks()),
            "budgets": {t: self.book.remaining(t, time.time()) for t in self.book.limits} if self.book else {},
        }

    async def fleet_status(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(self.snapshot())

    async def breakers(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(self.dispatcher.describe())

    async def metrics_endpoint(self, http: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(openapi_document(_version()))


def _version() -> str:
    try:
        return importlib.metadata.version("modelyard")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _finish_request(state: dict[str, Any], status: int, seconds: float) -> None:
    """The HTTP exchange is over: let the pipeline settle limits and commit budgets."""
    request = state.get("request")
    if isinstance(request, Request):
        request.finish()


async def _first_chunk(stream: AsyncIterator[Any]) -> Any:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
        raise


async def _modelyard_error(request: HTTPRequest, exc: Exception) -> HTTPResponse:
    assert isinstance(exc, ModelyardError)
    state = request.scope.setdefault("state", {})
    state["error"] = exc.error_type
    response = error_response(exc, anthropic_error_body(exc) if request.url.path.startswith(ANTHROPIC_PREFIX) else None)
    if state.get("attempts"):
        response.headers["x-modelyard-attempts"] = str(state["attempts"])
    request_obj = state.get("request")
    if request_obj is not None:
        for name, value in request_obj.ratelimit.items():
            response.headers[name] = value
    return response


async def _http_error(request: HTTPRequest, exc: Exception) -> HTTPResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}"))
    if exc.status_code == 404:
        return error_response(NotFound(f"Unknown request URL: {request.method} {request.url.path}", code="unknown_url"))
    return error_response(InvalidRequest(str(exc.detail)))


async def _unexpected(request: HTTPRequest, exc: Exception) -> HTTPResponse:
    log.exception("unhandled error on %s", request.url.path)
    request.scope.setdefault("state", {})["error"] = "server_error"
    return error_response(ModelyardError(f"internal error ({type(exc).__name__}); see the server log"))


def _ledger_commit(ledger: LedgerWriter) -> LastByteHook:
    """An inference response's last byte waits for its ledger row (server.durable_ledger)."""

    async def commit(state: dict[str, Any]) -> None:
        if "request" in state:  # an inference request: the observers have just recorded its row
            await ledger.committed()

    return commit


def create_app(
    handler: Handler, fleet: FleetRuntime, dispatcher: Dispatcher, config: FleetConfig, store: Store, ledger: LedgerWriter, keyring: Keyring,
    tracing: Observer | None = None, access_log: AccessLog | None = None,
) -> Starlette:
    """The ASGI app for one pipeline over a started fleet; ``app.state.batches`` runs batch jobs.

    ``tracing``: an observer that turns each finished request into spans (it runs after the ledger's, which costs the request).
    ``access_log``: where each request's JSON line goes (None: nowhere).
    """
    holder: list[Api] = []
    metrics = Metrics(lambda: holder[0].snapshot())
    api = Api(handler, fleet, dispatcher, config, metrics, keyring.book)
    holder.append(api)
    routes = [
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.get_model, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/admin/fleet", api.fleet_status, methods=["GET"]),
        Route("/admin/breakers", api.breakers, methods=["GET"]),
        Route("/admin/usage", UsageRoute(ledger).handle, methods=["GET"]),
    ]
    observers: list[Observer] = [
        LedgerRecorder(ledger, config, lambda: keyring.plans).observe, SessionRecorder(ledger).observe, metrics.observe,
        *([tracing] if tracing is not None else []), _finish_request,
    ]
    execute = line_executor(handler, keyring.policy_of, observers, ledger.flush)
    scheduling = config.scheduling
    runner = BatchRunner(store, execute, scheduling.batch_concurrency, scheduling.batch_lease_s)
    batches = BatchService(store, runner, scheduling.max_file_bytes)
    routes += BatchRoutes(batches, config.server.max_body_bytes).routes()
    routes += AdminRoutes(keyring.accounts, keyring).routes()
    routes += DashboardRoutes(ledger, api.snapshot).routes()
    routes += AnthropicRoutes(api).routes()
    routes += ResponsesRoutes(api, store).routes()
    routes += SessionRoutes(store, ledger).routes()
    handlers: dict[Any, Any] = {ModelyardError: _modelyard_error, HTTPException: _http_error, Exception: _unexpected}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.add_middleware(HotRoutes, endpoints=fixed_post_endpoints(routes), handlers=handlers)  # innermost: after auth
    app.add_middleware(AuthMiddleware, keyring=keyring)
    last_byte = _ledger_commit(ledger) if config.server.durable_ledger else None
    app.add_middleware(RequestContextMiddleware, observers=observers, before_last_byte=last_byte, access_log=access_log)
    app.state.batches = batches
    return app
