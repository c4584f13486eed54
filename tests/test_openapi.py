"""``GET /openapi.json``: a valid OpenAPI 3.1 document that covers every route and matches what the server answers."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from modelyard.api.app import create_app
from modelyard.api.openapi import openapi_document
from modelyard.config.loader import parse_config

from .conftest import LiveServer, start_modelyard, write_config

FLEET = """
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-tokens: '3'}}}}
  fake-embed:
    kind: embedding
    deployments:
      - {{backend: openai, base_url: '{url}/v1'}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("openapi")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", FLEET.format(url=fake_upstream.url)), ["--data-dir", str(tmp / "data")])
    yield live
    live.stop()


@pytest.fixture(scope="module")
def document(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    return response.json()


def conforms(document: dict[str, Any], schema_name: str, instance: Any) -> None:
    """Validate ``instance`` against one named schema, resolving ``$ref`` inside the document."""
    jsonschema.validate(instance, {**document, "$ref": f"#/components/schemas/{schema_name}"}, cls=jsonschema.Draft202012Validator)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["info"]["version"] != "0+unknown"


def served_routes() -> set[tuple[str, str]]:
    """Every (method, path) the app answers, read from the real route table (dependencies are never called here)."""
    keyring = SimpleNamespace(accounts=None, policy_of=None, book=None, plans=None)
    config = parse_config({"models": {"m": {"deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}}})
    app = create_app(None, None, None, config, None, SimpleNamespace(flush=None), keyring)  # type: ignore[arg-type]
    routes = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r} is not a plain route: describe it in the OpenAPI document"
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)
        routes |= {(method.lower(), path) for method in route.methods or () if method != "HEAD"}
    return routes


def test_every_route_the_app_serves_is_documented() -> None:
    documented = {(method, path) for path, operations in openapi_document("1")["paths"].items() for method in operations}
    served = served_routes()
    assert len(served) > 25
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "the OpenAPI document names routes the app does not serve"


def test_every_error_status_is_documented_in_the_error_shape(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status in ("400", "401", "404", "429", "500"):
                content = operation["responses"][status]["content"]["application/json"]["schema"]
                shape = "AnthropicError" if path.startswith("/v1/messages") else "Error"  # Anthropic's API answers in its own error shape
                assert content == {"$ref": f"#/components/schemas/{shape}"}, (method, path, status)


def test_live_answers_match_their_schemas(server: LiveServer, document: dict[str, Any]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        conforms(document, "ChatCompletionRequest", chat)
        conforms(document, "ChatCompletion", http.post("/v1/chat/completions", json=chat).json())
        completion = {"model": "fake-chat", "prompt": "hi", "max_tokens": 3}
        conforms(document, "CompletionRequest", completion)
        conforms(document, "Completion", http.post("/v1/completions", json=completion).json())
        conforms(document, "Embeddings", http.post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "b"]}).json())
        conforms(document, "ModelList", http.get("/v1/models").json())
        conforms(document, "Model", http.get("/v1/models/fake-chat").json())
        line = json.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": chat})
        uploaded = http.post("/v1/files", files={"file": ("in.jsonl", io.BytesIO(line.encode()))}, data={"purpose": "batch"}).json()
        conforms(document, "File", uploaded)
        conforms(document, "FileList", http.get("/v1/files").json())
        batch_request = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": "v"}}
        conforms(document, "BatchRequest", batch_request)
        conforms(document, "Batch", http.post("/v1/batches", json=batch_request).json())
        conforms(document, "BatchList", http.get("/v1/batches").json())
        conforms(document, "Status", http.get("/healthz").json())


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/chat/completions", {"model": "fake-chat"}, 400),
    ("POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
    ("GET", "/v1/batches/batch_nope", None, 404),
    ("GET", "/v1/nowhere", None, 404),
    ("DELETE", "/v1/models", None, 405),
])
def test_errors_match_the_error_schema(server: LiveServer, document: dict[str, Any], method: str, path: str, body: Any, status: int) -> None:
    response = httpx.request(method, f"{server.url}{path}", json=body, timeout=10)
    assert response.status_code == status
    conforms(document, "Error", response.json())


def test_a_schema_rejects_what_the_server_rejects(document: dict[str, Any]) -> None:
    # The failing half: the schema is not so loose that anything passes.
    with pytest.raises(jsonschema.ValidationError):
        conforms(document, "BatchRequest", {"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": {"a": 1}})
    with pytest.raises(jsonschema.ValidationError):
        conforms(document, "Error", {"error": {"message": "m"}})
