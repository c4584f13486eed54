"""The official OpenAI SDK against a live ``modelyard serve`` on the default fleet.

Real llama.cpp inference on both embedded chat models, real MiniLM embeddings,
over real HTTP. Prompts are short so the suite stays quick.
"""

from __future__ import annotations

import base64
import json
import struct

import httpx
import openai
import pytest

from modelyard.config.defaults import AUTO_QUALITY_TARGET

from .conftest import LiveServer


@pytest.fixture(scope="module")
def client(default_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=default_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("model", ["smollm2-135m", "qwen2.5-0.5b"])
def test_chat_plain(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}], max_tokens=12, temperature=0
    )
    completion = raw.parse()
    assert raw.headers["x-modelyard-model"] == model == completion.model
    assert raw.headers["x-request-id"]
    text = completion.choices[0].message.content or ""
    assert text.strip()
    assert completion.usage is not None and completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens <= 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    if model == "qwen2.5-0.5b":
        assert "paris" in text.lower()


def test_chat_streamed_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=10, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 10


def test_stream_ends_with_done(default_server: LiveServer) -> None:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", default_server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_chat_json_schema_output_parses(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}, "required": ["city", "population"]}
    completion = client.chat.completions.create(
        model="qwen2.5-0.5b", messages=[{"role": "user", "content": "Give the largest city of Japan and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}, max_tokens=60, temperature=0,
    )
    data = json.loads(completion.choices[0].message.content or "")
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_json_object_mode(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Return a JSON object with a key named colour."}],
        response_format={"type": "json_object"}, max_tokens=80, temperature=0,
    )
    content = completion.choices[0].message.content or ""
    assert content.lstrip().startswith("{")  # the grammar holds even when max_tokens cuts the answer short
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


QUIZ = "Which gas do plants absorb from the air?\n\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\n\nAnswer with the letter of the correct option only."


def route_of(raw: object) -> dict[str, str]:
    """x-modelyard-route as a mapping: its first part is the reason, the rest key=value."""
    parts = raw.headers["x-modelyard-route"].split("; ")  # type: ignore[attr-defined]
    return {"reason": parts[0], **dict(p.split("=", 1) for p in parts[1:])}


def test_auto_routes_code_by_rule_and_the_rest_by_the_learned_router(client: openai.OpenAI) -> None:
    code = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "Write a python function to add two numbers"}], max_tokens=3)
    assert code.headers["x-modelyard-model"] == code.parse().model == "qwen2.5-0.5b"
    assert route_of(code)["reason"] == "rule:code" and route_of(code)["model"] == "qwen2.5-0.5b"
    quiz = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": QUIZ}], max_tokens=3)
    route = route_of(quiz)
    # A multiple-choice quiz: the router's word view settles it, so no embedding runs (docs/routing.md, words first).
    assert route["reason"] == f"learned:target={AUTO_QUALITY_TARGET:g}:words" and route["model"] == quiz.parse().model
    assert 0.0 < float(route["predicted_quality"]) < 1.0


# A logic-grid question: the task where the shipped router predicts Qwen above SmolLM2 (docs/routing.md).
LOGIC_GRID = (
    "Q: There are 3 houses in a row, numbered 1 on the left to 3 on the right. There is one person living in each house. "
    "The people in these houses have different characteristics:\n - Each person has a different pet: one has a cat, one has a dog, "
    "and one has a fish\n\nClue(s):\n1. The person who has a cat lives directly left of the person who has a dog.\n"
    "2. The fish owner lives in the third house.\n\nWhat is the number of the house where the person who has a cat lives?\n"
    "choice: 1\nchoice: 2\nchoice: 3\nA:"
)


def test_quality_header_moves_the_learned_choice(client: openai.OpenAI, default_server: LiveServer) -> None:
    messages = [{"role": "user", "content": LOGIC_GRID}]
    cheapest = client.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=2, extra_headers={"x-modelyard-quality": "0"})
    assert route_of(cheapest)["reason"] == "learned:target=0:words" and cheapest.parse().model == "smollm2-135m"  # the words settle it
    best = client.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=2, extra_headers={"x-modelyard-quality": "1"})
    assert route_of(best)["reason"] == "learned:target=1"
    # The choice moves with the header: the same question goes to the model predicted strictly better.
    assert best.parse().model == route_of(best)["model"] == "qwen2.5-0.5b"
    assert float(route_of(best)["predicted_quality"]) > float(route_of(cheapest)["predicted_quality"])
    bad = httpx.post(default_server.url + "/v1/chat/completions", headers={"x-modelyard-quality": "high"}, json={"model": "auto", "messages": messages, "max_tokens": 2}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-modelyard-quality"


def test_n_seed_stop_and_logprobs(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "List three fruits."}]
    a = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, seed=42, temperature=0.9, n=2, logprobs=True, top_logprobs=2)
    b = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, seed=42, temperature=0.9)
    c = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, seed=42, temperature=0.9)
    assert len(a.choices) == 2 and [c.index for c in a.choices] == [0, 1]
    assert b.choices[0].message.content == c.choices[0].message.content  # same seed, same sample
    assert a.choices[0].message.content == b.choices[0].message.content  # choice i samples with seed + i
    content = a.choices[0].logprobs.content if a.choices[0].logprobs else None
    assert content and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    stopped = client.chat.completions.create(model="qwen2.5-0.5b", messages=[{"role": "user", "content": "Count from 1 to 10 separated by commas."}], max_tokens=40, temperature=0, stop=["5"])
    assert "5" not in (stopped.choices[0].message.content or "") and stopped.choices[0].finish_reason == "stop"


def test_completions_endpoint(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=1)
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens <= 5
    assert completion.choices[0].logprobs is not None and completion.choices[0].logprobs.tokens


def test_embeddings_float_and_base64(client: openai.OpenAI, default_server: LiveServer) -> None:
    result = client.embeddings.create(model="minilm-l6", input=["the cat sat", "a dog ran", "the cat sat"])
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-6)
    assert result.usage.prompt_tokens > 0
    single = client.embeddings.create(model="minilm-l6", input="the cat sat")
    assert single.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    raw = httpx.post(default_server.url + "/v1/embeddings", json={"model": "minilm-l6", "input": "the cat sat", "encoding_format": "base64"}, timeout=60).json()
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(vectors[0], abs=1e-5)


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"smollm2-135m", "qwen2.5-0.5b", "minilm-l6", "auto"} <= ids
    assert client.models.retrieve("minilm-l6").id == "minilm-l6"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


# -- errors: OpenAI's shape, the right status, never a stack trace ------------------------

def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_invalid_parameter_is_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert info.value.body["param"] == "temperature"  # type: ignore[index]


def test_wrong_model_kind_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="smollm2-135m", input="x")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="minilm-l6", messages=[{"role": "user", "content": "x"}])


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather in a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def test_tools_on_a_model_whose_template_has_none_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert info.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="qwen2.5-0.5b", messages=ASK_WEATHER, tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                       response_format={"type": "json_object"})
    assert info.value.body["param"] == "response_format"  # type: ignore[index]


def test_a_required_tool_call_on_the_local_model(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    response = client.chat.completions.create(model="qwen2.5-0.5b", messages=ASK_WEATHER, tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                              tool_choice=named, max_tokens=60, seed=1)  # type: ignore[arg-type]
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments)["city"], str)  # the schema held: valid JSON with the required field

    stream = client.chat.completions.create(model="qwen2.5-0.5b", messages=ASK_WEATHER, tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                            tool_choice="required", max_tokens=60, seed=1, stream=True)
    deltas = [c.choices[0] for c in stream if c.choices]
    streamed = [t for d in deltas for t in (d.delta.tool_calls or [])]
    assert deltas[-1].finish_reason == "tool_calls"
    assert streamed and streamed[0].function is not None and streamed[0].function.name == "get_weather"
    assert "city" in json.loads("".join(t.function.arguments or "" for t in streamed if t.function))


def test_a_tool_result_goes_back_to_the_local_model(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [*ASK_WEATHER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21, "sky": "clear"}'}]
    response = client.chat.completions.create(model="qwen2.5-0.5b", messages=messages, tools=[WEATHER_TOOL], max_tokens=40, seed=1)  # type: ignore[arg-type, list-item]
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls  # an answer or another call, never an empty message


def test_context_overflow_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "hello " * 10000}], max_tokens=5)
    assert info.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [(b"{not json", 400, "invalid_json"), (b"", 400, "invalid_json"), (b"[]", 400, "invalid_json")],
)
def test_malformed_bodies(default_server: LiveServer, content: bytes, status: int, code: str) -> None:
    response = httpx.post(default_server.url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


def test_body_too_large_is_413(default_server: LiveServer) -> None:
    big = b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "' + b"a" * (9 * 1024 * 1024) + b'"}]}'
    response = httpx.post(default_server.url + "/v1/chat/completions", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_and_method(default_server: LiveServer) -> None:
    missing = httpx.get(default_server.url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    wrong = httpx.get(default_server.url + "/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_request_id_is_echoed_and_logged(default_server: LiveServer) -> None:
    response = httpx.get(default_server.url + "/v1/models", headers={"x-request-id": "trace-abc-123"})
    assert response.headers["x-request-id"] == "trace-abc-123"
    generated = httpx.get(default_server.url + "/v1/models").headers["x-request-id"]
    assert len(generated) == 32
    logged = default_server.access_lines(lambda entry: entry["request_id"] == "trace-abc-123")
    assert [(entry["status"], entry["path"]) for entry in logged] == [(200, "/v1/models")]


def test_health_and_readiness(default_server: LiveServer) -> None:
    assert httpx.get(default_server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(default_server.url + "/readyz").status_code == 200
    fleet = httpx.get(default_server.url + "/admin/fleet").json()
    assert fleet["ready"] and {d["deployment"] for d in fleet["deployments"]} == {"smollm2-135m/0", "qwen2.5-0.5b/0", "minilm-l6/0", "minilm-l2-int8/0"}


def test_auto_sends_tool_requests_to_the_model_that_takes_tools(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK_WEATHER, tools=[WEATHER_TOOL], max_tokens=60, seed=1)  # type: ignore[list-item]
    assert raw.headers["x-modelyard-route"] == "rule:tools; model=qwen2.5-0.5b"
    message = raw.parse().choices[0].message
    assert message.content or message.tool_calls
