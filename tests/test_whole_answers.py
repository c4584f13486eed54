"""``upstream_streaming: when_client_streams``: a non-streamed request is fetched in one response.

The client must not be able to tell: the same text, finish reason, usage,
log-probabilities and tool calls as when modelyard streams the answer from the
upstream and joins it. The fake upstream records what it was asked
(``GET /received``), so each test also checks which way the answer was fetched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import LiveServer, start_modelyard, write_config

TOOL = 'lookup {"city": "Paris"}'


def fleet_yaml(url: str) -> str:
    whole = "upstream_streaming: when_client_streams"
    return f"""
models:
  streamed:
    kind: chat
    deployments: [{{backend: openai, base_url: '{url}/v1', upstream_model: fake}}]
  whole:
    kind: chat
    deployments: [{{backend: openai, base_url: '{url}/v1', upstream_model: fake, {whole}}}]
  streamed-tool:
    kind: chat
    deployments: [{{backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-tool-call: '{TOOL}'}}}}]
  whole-tool:
    kind: chat
    deployments: [{{backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-tool-call: '{TOOL}'}}, {whole}}}]
  whole-only:
    kind: chat
    deployments: [{{backend: openai, base_url: '{url}/v1', upstream_model: fake, {whole}}}]
  whole-hedged:
    kind: chat
    hedge: {{enabled: true, after_ms: 5000}}
    deployments: [{{backend: openai, base_url: '{url}/v1', upstream_model: fake, {whole}}}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("whole")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", fleet_yaml(fake_upstream.url)))
    yield live
    live.stop()


def ask(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(server.url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def last_sent(fake: LiveServer) -> dict[str, Any]:
    received: list[dict[str, Any]] = httpx.get(fake.url + "/received").json()
    return received[-1]


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """The answer without what differs between any two answers (ids, times, the model's name)."""
    return {k: v for k, v in body.items() if k not in ("id", "created", "model")}


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "one two three"}], "logprobs": True, "top_logprobs": 2, "n": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "stop early"}], "max_tokens": 40}),
        ("/v1/completions", {"prompt": "one two three"}),
    ],
    ids=["chat-logprobs-n2", "chat-stop", "completion"],
)
def test_a_whole_answer_reads_as_the_streamed_one(server: LiveServer, fake_upstream: LiveServer, path: str, extra: dict[str, Any]) -> None:
    body = {"max_tokens": 6} | extra
    streamed = ask(server, path, body | {"model": "streamed"})
    assert last_sent(fake_upstream)["stream"] is True
    whole = ask(server, path, body | {"model": "whole"})
    sent = last_sent(fake_upstream)
    assert sent["stream"] is False and "stream_options" not in sent
    assert comparable(whole.json()) == comparable(streamed.json())
    assert whole.headers["x-modelyard-deployment"] == "whole/0"


def test_a_whole_tool_call_reads_as_the_streamed_one(server: LiveServer, fake_upstream: LiveServer) -> None:
    body = {"messages": [{"role": "user", "content": "weather?"}], "tools": [{"type": "function", "function": {"name": "lookup"}}]}
    answers = []
    for model in ("streamed-tool", "whole-tool"):
        choice = ask(server, "/v1/chat/completions", body | {"model": model}).json()["choices"][0]
        assert last_sent(fake_upstream)["stream"] is (model == "streamed-tool")
        calls = choice["message"]["tool_calls"]
        assert [c["id"].startswith("call_") for c in calls] == [True]
        answers.append((choice["finish_reason"], [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]))
    assert answers[0] == answers[1] == ("tool_calls", [("function", "lookup", {"city": "Paris"})])


def test_a_streaming_client_is_still_streamed(server: LiveServer, fake_upstream: LiveServer) -> None:
    body = {"model": "whole", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert len(events) >= 2 and last_sent(fake_upstream)["stream"] is True


def test_a_hedged_model_streams_so_its_hedge_can_watch_the_first_token(server: LiveServer, fake_upstream: LiveServer) -> None:
    ask(server, "/v1/chat/completions", {"model": "whole-hedged", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert last_sent(fake_upstream)["stream"] is True


def test_a_whole_answer_records_no_ttft(server: LiveServer) -> None:
    """Its wait is the whole answer's, not a first token's: the TTFT histogram and the balancer's estimate leave it out
    (``whole-only`` serves nothing else, so any TTFT it shows came from a whole answer)."""
    def ttft_count(text: str, model: str) -> float:
        prefix = f'modelyard_time_to_first_token_seconds_count{{model="{model}"'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = httpx.get(server.url + "/metrics").text
    for model in ("streamed", "whole-only"):
        ask(server, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    after = httpx.get(server.url + "/metrics").text
    assert ttft_count(after, "streamed") == ttft_count(before, "streamed") + 1
    assert ttft_count(after, "whole-only") == ttft_count(before, "whole-only") == 0
    fleet = httpx.get(server.url + "/admin/fleet").json()["breakers"]
    assert fleet["whole-only/0"]["ewma_ttft_ms"] is None and fleet["streamed/0"]["ewma_ttft_ms"] is not None
