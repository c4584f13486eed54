"""Anthropic's Messages API through the official ``anthropic`` SDK: against the fake upstream (a tool round trip too), and one on the embedded Qwen."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from .conftest import LiveServer, start_modelyard, write_config

MASTER = "sk-anthropic-test-master"
CONFIG = """
models:
  fake:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-text: 'Hello from the fake upstream'}}, price: {{input_per_1m: 1, output_per_1m: 1}}}}
  tooly:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-tool-call: 'get_weather {{"city": "Paris", "units": ["c", "f"]}}'}}}}
"""
WEATHER = {"name": "get_weather", "description": "The weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("anthropic")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", CONFIG.format(url=fake_upstream.url)), env={"MODELYARD_MASTER_KEY": MASTER})
    yield live
    live.stop()


def client(server: LiveServer, key: str = MASTER) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=120)


def test_a_plain_message(fake_server: LiveServer) -> None:
    message = client(fake_server).messages.create(model="fake", max_tokens=20, system="Be brief.", messages=[{"role": "user", "content": "Hi"}])
    assert message.type == "message" and message.role == "assistant" and message.model == "fake"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello from the fake upstream"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 5


def test_a_streamed_message_has_the_exact_event_order(fake_server: LiveServer) -> None:
    with client(fake_server).messages.stream(model="fake", max_tokens=20, messages=[{"role": "user", "content": "Hi"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.content[0].text == "Hello from the fake upstream"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5
    raw = httpx.post(fake_server.url + "/v1/messages", headers={"x-api-key": MASTER},
                     json={"model": "fake", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
    names = [line[7:] for line in raw.text.splitlines() if line.startswith("event: ")]
    deltas = names.count("content_block_delta")
    assert names == ["message_start", "ping", "content_block_start", *["content_block_delta"] * deltas, "content_block_stop", "message_delta", "message_stop"]
    # Tokens that reach the gateway in one read go out as one delta, so count text, not events.
    texts = [json.loads(line[6:])["delta"]["text"] for line in raw.text.splitlines() if line.startswith("data: ") and '"text_delta"' in line]
    assert deltas == len(texts) >= 1 and "".join(texts) == "Hello from the fake upstream" and "message_start" in kinds


def test_count_tokens_answers(fake_server: LiveServer) -> None:
    counted = client(fake_server).messages.count_tokens(model="fake", messages=[{"role": "user", "content": "How many tokens is this?"}])
    assert 0 < counted.input_tokens < 40


def test_errors_come_in_anthropics_shape(fake_server: LiveServer) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(fake_server).messages.create(model="fake", max_tokens=0, messages=[{"role": "user", "content": "Hi"}])
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error" and "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(fake_server).messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as denied:
        client(fake_server, key="sk-wrong").messages.create(model="fake", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    image = {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}
    with pytest.raises(anthropic.BadRequestError, match="text and tool_result"):
        client(fake_server).messages.create(model="fake", max_tokens=5, messages=[image])  # type: ignore[list-item]


def test_a_tool_round_trip_against_the_fake_upstream(fake_server: LiveServer, fake_upstream: LiveServer) -> None:
    sdk = client(fake_server)
    first = sdk.messages.create(model="tooly", max_tokens=30, tools=[WEATHER], messages=ASK)  # type: ignore[list-item, arg-type]
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris", "units": ["c", "f"]}  # never {} (LiteLLM #25321)
    raw = httpx.post(fake_server.url + "/v1/messages", headers={"x-api-key": MASTER}, timeout=60,
                     json={"model": "tooly", "max_tokens": 30, "stream": True, "tools": [WEATHER], "messages": ASK})
    events = [json.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]  # one start for the one call
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert all(d["type"] == "input_json_delta" and d["partial_json"] for d in deltas)  # no empty input_json_delta (LiteLLM #29286)
    assert json.loads("".join(d["partial_json"] for d in deltas)) == call.input
    assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"
    answer = sdk.messages.create(model="fake", max_tokens=20, tools=[WEATHER], messages=[  # type: ignore[list-item]
        *ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"}]},
    ])  # type: ignore[arg-type]
    assert answer.content[0].text == "Hello from the fake upstream"  # type: ignore[union-attr]
    sent = httpx.get(fake_upstream.url + "/received").json()[-1]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}  # the result went back to the model
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"]) == call.input


def test_a_tool_round_trip_on_the_local_model(default_server: LiveServer) -> None:
    local = client(default_server, key="unused")
    first = local.messages.create(model="qwen2.5-0.5b", max_tokens=60, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"},  # type: ignore[list-item]
                                  messages=ASK)  # type: ignore[arg-type]
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and isinstance(call.input.get("city"), str)  # never {} (LiteLLM #25321)
    with local.messages.stream(model="qwen2.5-0.5b", max_tokens=60, tools=[WEATHER], tool_choice={"type": "any"}, messages=ASK) as stream:  # type: ignore[list-item, arg-type]
        events = list(stream)
        streamed = stream.get_final_message()
    tool_blocks = [b for b in streamed.content if b.type == "tool_use"]
    assert len(tool_blocks) >= 1 and tool_blocks[0].name == "get_weather" and tool_blocks[0].input.get("city")  # type: ignore[union-attr]
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta")  # type: ignore[union-attr]
    assert json.loads(partial) == tool_blocks[0].input  # the fragments join to the input, byte for byte
    starts = [e for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"]  # type: ignore[union-attr]
    assert len(starts) == len(tool_blocks)  # one start per call, never one call over several starts
    answer = local.messages.create(model="qwen2.5-0.5b", max_tokens=40, tools=[WEATHER], messages=[  # type: ignore[list-item]
        *ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": '{"temperature_c": 21, "sky": "clear"}'}]},
    ])  # type: ignore[arg-type]
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
