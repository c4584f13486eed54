"""HotRoutes: exact-path POSTs reach their endpoint directly; errors render as Starlette's exception layer would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelyard.api.hot_routes import HotRoutes, fixed_post_endpoints, handler_for
from modelyard.errors import InvalidRequest, ModelNotFound, ModelyardError


class Fallthrough:
    """The app behind the middleware: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(f"{scope['method']} {scope['path']}")
        await JSONResponse({"router": True}, status_code=299)(scope, receive, send)


async def chat(request: Request) -> Response:
    body = await request.json()
    if body.get("fail") == "model":
        raise ModelNotFound("no such model", param="model")
    if body.get("fail") == "bug":
        raise RuntimeError("a bug")
    if body.get("fail") == "late":
        return StreamingResponse(_breaks_midway(), media_type="text/event-stream")
    return JSONResponse({"echo": body, "path_params": request.path_params})


async def _breaks_midway() -> AsyncIterator[bytes]:
    yield b"data: first\n\n"
    raise ModelNotFound("too late to render", param="model")


async def render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelyardError)
    return JSONResponse(exc.to_body(), status_code=exc.status)


async def unexpected(request: Request, exc: Exception) -> Response:
    return JSONResponse({"caught": "by the catch-all"}, status_code=500)


def client_for(behind: Fallthrough) -> httpx.AsyncClient:
    routes = [Route("/v1/chat", chat, methods=["POST"]), Route("/v1/items/{item_id}", chat, methods=["POST"]), Route("/v1/list", chat, methods=["GET"])]
    app = HotRoutes(behind, endpoints=fixed_post_endpoints(routes), handlers={ModelyardError: render_error, Exception: unexpected})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=True), base_url="http://test")


def test_only_fixed_post_routes_are_hot() -> None:
    routes = [
        Route("/a", chat, methods=["POST"]), Route("/a", unexpected, methods=["POST"]), Route("/b/{x}", chat, methods=["POST"]),
        Route("/c", chat, methods=["GET"]), Route("/d", chat, methods=["GET", "POST"]), Route("/e", chat),
    ]
    assert fixed_post_endpoints(routes) == {"/a": chat}


def test_handler_found_by_the_nearest_class() -> None:
    handlers = {ModelyardError: render_error, Exception: unexpected}
    assert handler_for(handlers, InvalidRequest("x")) is render_error
    assert handler_for(handlers, KeyError("x")) is unexpected
    assert handler_for({ModelyardError: render_error}, KeyError("x")) is None


async def test_hot_post_skips_the_router() -> None:
    behind = Fallthrough()
    async with client_for(behind) as client:
        response = await client.post("/v1/chat", json={"hello": 1})
    assert response.status_code == 200 and response.json() == {"echo": {"hello": 1}, "path_params": {}}
    assert behind.paths == []


async def test_everything_else_falls_through() -> None:
    behind = Fallthrough()
    async with client_for(behind) as client:
        for method, path in [("GET", "/v1/chat"), ("POST", "/v1/items/7"), ("POST", "/v1/nowhere"), ("POST", "/v1/chat/"), ("GET", "/v1/list")]:
            assert (await client.request(method, path, json={})).status_code == 299
    assert behind.paths == ["GET /v1/chat", "POST /v1/items/7", "POST /v1/nowhere", "POST /v1/chat/", "GET /v1/list"]


async def test_error_before_the_response_uses_the_apps_handler() -> None:
    async with client_for(Fallthrough()) as client:
        response = await client.post("/v1/chat", json={"fail": "model"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no such model" and response.json()["error"]["param"] == "model"


async def test_unexpected_error_goes_to_the_outer_layers() -> None:
    async with client_for(Fallthrough()) as client:
        with pytest.raises(RuntimeError, match="a bug"):
            await client.post("/v1/chat", json={"fail": "bug"})


async def test_error_after_the_response_started_is_not_rendered_twice() -> None:
    async with client_for(Fallthrough()) as client:
        with pytest.raises(ModelNotFound, match="too late"):
            await client.post("/v1/chat", json={"fail": "late"})
