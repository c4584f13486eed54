"""The floor for a Python gateway: a bare pass-through proxy on modelyard's own stack, with no features.

    .venv/bin/python bench/floor_proxy.py --port 8001 --upstream http://127.0.0.1:8000

The same server stack as ``modelyard serve`` (uvicorn with httptools on
uvloop, access log off) and the same upstream client (one pooled
``aiohttp.ClientSession``), but a plain ASGI handler that forwards
``POST /v1/chat/completions`` to the upstream and relays its status and body
bytes as they arrive (SSE streams included). No keys, limits, routing,
scheduling, metrics, logs or ledger: what any Python gateway costs before its
features. ``bench/gateway.py`` measures it in the same run as modelyard.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn
import uvloop

Scope = dict[str, Any]


class FloorProxy:
    """An ASGI app: one route, forwarded byte for byte."""

    def __init__(self, upstream: str, max_connections: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_connections = max_connections
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await _respond(send, 404, b'{"error":{"message":"not found","type":"invalid_request_error"}}')
            return
        body = await _read_body(receive)
        if self.session is None:  # created on the serving loop
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_connections))
        try:
            async with self.session.post(self.upstream + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}) as upstream:
                content_type = upstream.headers.get("Content-Type", "application/json").encode()
                await send({"type": "http.response.start", "status": upstream.status, "headers": [(b"content-type", content_type)]})
                async for chunk in upstream.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except aiohttp.ClientError:
            await _respond(send, 502, b'{"error":{"message":"upstream failed","type":"upstream_error"}}')


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL (without /v1)")
    parser.add_argument("--max-connections", type=int, default=512, help="the upstream pool's size (modelyard's bench config uses 512)")
    args = parser.parse_args()
    app = FloorProxy(args.upstream, args.max_connections)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, loop="none", http="httptools", lifespan="off", access_log=False, log_level="warning")
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
