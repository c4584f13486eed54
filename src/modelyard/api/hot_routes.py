"""A direct path for the inference routes, past Starlette's router and exception layer.

Starlette matches a request against every route's regex in turn and wraps the
endpoint in two exception-handling layers; on the hot routes (``POST
/v1/chat/completions`` and friends) that was a tenth of the gateway's CPU per
request (``bench/profile_gateway.py``). ``HotRoutes`` sends a POST whose path
is exactly one of those routes straight to its endpoint with one dict lookup,
and renders an exception the way Starlette's exception layer would (the same
handlers, found the same way, by the exception's class hierarchy). Every other
request (another method, a path with parameters, an unknown path) goes on to
the Starlette app unchanged, so 404/405 and the OpenAPI routes keep their
behaviour.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def fixed_post_endpoints(routes: Sequence[BaseRoute]) -> dict[str, Endpoint]:
    """The POST routes whose path has no parameters, by path; the first route for a path wins, as in Starlette."""
    endpoints: dict[str, Endpoint] = {}
    for route in routes:
        if not isinstance(route, Route) or route.param_convertors or route.methods is None:
            continue
        if route.methods - {"POST"}:  # a route that also serves other methods stays with the router
            continue
        endpoints.setdefault(route.path, route.endpoint)  # type: ignore[arg-type]
    return endpoints


def handler_for(handlers: Mapping[Any, ExceptionHandler], exc: BaseException) -> ExceptionHandler | None:
    """The handler registered for the nearest class in ``exc``'s MRO (how Starlette chooses), or None."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class HotRoutes:
    """ASGI middleware: exact-path POST requests go straight to their endpoint.

    ``handlers`` are the app's exception handlers; the catch-all (``Exception``)
    is left out on purpose, because Starlette runs it in its outermost layer,
    after every middleware: an unexpected error must reach that layer here too.
    """

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, Endpoint], handlers: Mapping[Any, ExceptionHandler]) -> None:
        self.app = app
        self.endpoints = dict(endpoints)
        self.handlers = {cls: handler for cls, handler in handlers.items() if cls is not Exception}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path") else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
            await response(scope, receive, sender)
        except Exception as exc:
            handler = handler_for(self.handlers, exc)
            if handler is None or started:  # nothing to render with, or too late to change the status: the outer layers decide
                raise
            response = await handler(request, exc)
            await response(scope, receive, send)
