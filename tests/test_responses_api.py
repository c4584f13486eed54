"""OpenAI's Responses API through the official ``openai`` SDK (``client.responses.create``), against the fake upstream and the embedded Qwen."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import LiveServer, start_modelyard, write_config

CONFIG = """
models:
  echo:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-echo: '1'}}}}
"""
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[tuple[LiveServer, LiveServer]]:
    tmp = tmp_path_factory.mktemp("responses")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", CONFIG.format(url=fake_upstream.url)))
    yield live, fake_upstream
    live.stop()


def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_a_plain_response(echo_server: tuple[LiveServer, LiveServer]) -> None:
    live, _ = echo_server
    response = client(live).responses.create(model="echo", input="Say hello", instructions="Be brief.")
    assert response.object == "response" and response.status == "completed" and response.id.startswith("resp_")
    assert response.output_text == "Say hello"  # the echo upstream answers with the last message
    assert response.instructions == "Be brief." and response.usage is not None and response.usage.output_tokens == 2


def test_a_streamed_response_has_the_response_events(echo_server: tuple[LiveServer, LiveServer]) -> None:
    live, _ = echo_server
    stream = client(live).responses.create(model="echo", input="one two three", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "one two three"  # type: ignore[union-attr]
    assert events[-1].response.output_text == "one two three"  # type: ignore[union-attr]


def test_previous_response_id_continues_the_conversation(echo_server: tuple[LiveServer, LiveServer]) -> None:
    live, fake = echo_server
    first = client(live).responses.create(model="echo", input="remember the word ocean", instructions="first instructions")
    client(live).responses.create(model="echo", input="what was the word?", previous_response_id=first.id)
    sent = httpx.get(fake.url + "/received").json()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]  # the instructions are not carried over
    assert sent[0]["content"] == "remember the word ocean" and sent[1]["content"] == "remember the word ocean"
    unstored = client(live).responses.create(model="echo", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client(live).responses.create(model="echo", input="next", previous_response_id=unstored.id)


def test_bad_input_is_a_clear_400(echo_server: tuple[LiveServer, LiveServer]) -> None:
    live, _ = echo_server
    with pytest.raises(openai.BadRequestError, match="only function tools"):
        client(live).responses.create(model="echo", input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="input"):
        client(live).responses.create(model="echo", input=[])


def test_a_function_call_round_trip_on_the_local_model(default_server: LiveServer) -> None:
    local = client(default_server)
    first = local.responses.create(model="qwen2.5-0.5b", input="What is the weather in Paris? Use the tool.", tools=[WEATHER],  # type: ignore[list-item]
                                   tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and isinstance(json.loads(calls[0].arguments)["city"], str)
    answer = local.responses.create(model="qwen2.5-0.5b", previous_response_id=first.id, tools=[WEATHER], max_output_tokens=40,  # type: ignore[list-item]
                                    input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temperature_c": 21}'}])
    assert answer.status in ("completed", "incomplete") and answer.output
    stream = local.responses.create(model="qwen2.5-0.5b", input="Weather in Oslo? Use the tool.", tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
                                    max_output_tokens=60, stream=True)
    events = list(stream)
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")  # type: ignore[union-attr]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and done[0].arguments == arguments and "city" in json.loads(arguments)  # type: ignore[union-attr]
