"""Property-based fuzzing of the live API: whatever a client sends, no 5xx, and the server stays up.

Bodies start from a valid request and have any of their fields replaced by
arbitrary JSON (or are arbitrary JSON, or not JSON at all); hypothesis drives
them at a real ``modelyard serve`` over real HTTP. The upstream is the fake
OpenAI-compatible server, so a 5xx can only come from modelyard itself.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import LiveServer, start_modelyard, write_config

FLEET = """
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-tokens: '2'}}}}
  fake-embed:
    kind: embedding
    deployments:
      - {{backend: openai, base_url: '{url}/v1'}}
aliases:
  any:
    targets: [fake-chat]
"""
EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SCALARS = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# Values a field of the right type might hold, so fuzzing reaches past the first type check.
PLAUSIBLE = JSON_VALUES | st.sampled_from(["fake-chat", "fake-embed", "any", "user", "json_schema", "none", "auto", "required", "24h", "batch", 0, 1, -1, 2**31, 2**63])

CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
               "logprobs", "top_logprobs", "response_format", "tools", "tool_choice", "user", "frequency_penalty", "presence_penalty"]
COMPLETION_FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options", "logprobs", "echo", "suffix", "user"]
EMBEDDING_FIELDS = ["model", "input", "encoding_format", "user"]
BATCH_FIELDS = ["input_file_id", "endpoint", "completion_window", "metadata"]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]
HEADERS = ["x-modelyard-class", "x-modelyard-session", "x-modelyard-quality", "x-request-id"]  # not the timeout: a tiny one is a legitimate 504


def mutated(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with some fields replaced by fuzz and some removed."""
    changes = st.dictionaries(st.sampled_from(fields), PLAUSIBLE, max_size=4)
    removals = st.sets(st.sampled_from(fields), max_size=2)
    return st.builds(lambda c, r: {k: v for k, v in (base | c).items() if k not in r}, changes, removals)


def chat_bodies() -> st.SearchStrategy[Any]:
    base = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    message = mutated({"role": "user", "content": "hi"}, MESSAGE_FIELDS)
    with_messages = st.builds(lambda body, ms: body | {"messages": ms}, mutated(base, CHAT_FIELDS), st.lists(message | JSON_VALUES, max_size=3))
    return mutated(base, CHAT_FIELDS) | with_messages | JSON_VALUES


BODIES = {
    "/v1/chat/completions": chat_bodies(),
    "/v1/completions": mutated({"model": "fake-chat", "prompt": "hi", "max_tokens": 2}, COMPLETION_FIELDS) | JSON_VALUES,
    "/v1/embeddings": mutated({"model": "fake-embed", "input": "hi"}, EMBEDDING_FIELDS) | JSON_VALUES,
    "/v1/batches": mutated({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, BATCH_FIELDS) | JSON_VALUES,
}
HEADER_VALUES = st.dictionaries(st.sampled_from(HEADERS), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12).map(str.strip), max_size=2)  # a header value may not start or end with a space


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", FLEET.format(url=fake_upstream.url)), ["--data-dir", str(tmp / "data")])
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def check(response: httpx.Response) -> None:
    """No 5xx; an error is in OpenAI's shape."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)


def post(client: httpx.Client, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    with client.stream("POST", path, content=json.dumps(body).encode(), headers={"content-type": "application/json", **headers}) as response:
        response.read()  # a stream is read to its end: an error after the first byte must not be a 5xx either
        return response


@pytest.mark.parametrize("path", list(BODIES))
def test_no_body_gets_a_5xx(server: LiveServer, client: httpx.Client, path: str) -> None:
    @FUZZ
    @given(body=BODIES[path], headers=HEADER_VALUES)
    def run(body: Any, headers: dict[str, str]) -> None:
        check(post(client, path, body, headers))

    run()
    assert client.get("/healthz").status_code == 200


@FUZZ
@given(raw=st.binary(max_size=200))
def test_bytes_that_are_not_json_get_a_400(client: httpx.Client, raw: bytes) -> None:
    for path in BODIES:
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        check(response)
        assert response.status_code in (400, 404)


@FUZZ
@given(purpose=PLAUSIBLE, content=st.binary(max_size=300) | st.lists(JSON_VALUES, max_size=4).map(lambda rows: "\n".join(map(json.dumps, rows)).encode()),
       batch=mutated({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, BATCH_FIELDS))
def test_files_and_batches_take_any_upload(client: httpx.Client, purpose: Any, content: bytes, batch: dict[str, Any]) -> None:
    purpose_text = purpose if isinstance(purpose, str) else json.dumps(purpose)
    uploaded = client.post("/v1/files", files={"file": ("x.jsonl", io.BytesIO(content))}, data={"purpose": purpose_text})
    check(uploaded)
    if uploaded.status_code == 200:
        file_id = uploaded.json()["id"]
        check(client.get(f"/v1/files/{file_id}"))
        check(post(client, "/v1/batches", {"input_file_id": file_id} | batch, {}))
    check(client.get("/v1/files", params={"purpose": purpose_text, "limit": str(purpose)[:6]}))
    check(client.get("/v1/batches", params={"after": purpose_text, "limit": str(purpose)[:6]}))


def test_the_server_still_answers_after_the_fuzz(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
