"""Request validation: every bad parameter is a 400 that names it."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.api import parse
from modelyard.errors import InvalidRequest


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        (chat(messages=[]), "messages"),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (chat(messages=[{"role": "user"}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), "messages[0].content"),
        (chat(temperature=3), "temperature"),
        (chat(temperature="hot"), "temperature"),
        (chat(top_p=1.5), "top_p"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens=-5), "max_completion_tokens"),
        (chat(n=0), "n"),
        (chat(n=99), "n"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(stop=3), "stop"),
        (chat(seed=1.5), "seed"),
        (chat(stream="yes"), "stream"),
        (chat(stream_options={"include_usage": True}), "stream_options"),
        (chat(response_format={"type": "xml"}), "response_format"),
        (chat(response_format={"type": "json_schema", "json_schema": "x"}), "response_format.json_schema"),
        (chat(tools=[{"type": "function"}]), "tools[0]"),
        (chat(tool_choice=7, tools=[]), "tool_choice"),
        (chat(top_logprobs=3), "top_logprobs"),
        (chat(logprobs=True, top_logprobs=50), "top_logprobs"),
        (chat(presence_penalty=5), "presence_penalty"),
    ],
)
def test_chat_rejections_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse.chat_request(body, "rid", {})
    assert info.value.param == param
    assert info.value.status == 400
    assert info.value.to_body()["error"]["param"] == param


def test_chat_accepts_full_request() -> None:
    body = chat(
        max_tokens=10, max_completion_tokens=20, temperature=0.5, top_p=0.9, stop="END", seed=7, n=2, stream=True,
        stream_options={"include_usage": True}, logprobs=True, top_logprobs=3, user="u1",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    )
    request, include_usage = parse.chat_request(body, "rid", {"x-modelyard-class": "batch"})
    assert include_usage and request.stream and request.n == 2
    call = request.call
    assert call is not None
    assert call.sampling.max_tokens == 20  # max_completion_tokens wins
    assert call.sampling.stop == ("END",) and call.sampling.seed == 7 and call.sampling.top_logprobs == 3
    assert call.messages[1]["content"] == "ab"
    assert call.user == "u1"


def test_tool_choice_none_drops_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    request, _ = parse.chat_request(chat(tools=tools, tool_choice="none"), "rid", {})
    assert request.call is not None and request.call.tools == ()


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b"null"])
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse.parse_json(raw)
    assert info.value.code == "invalid_json"


def test_completion_and_embedding_parsing() -> None:
    request, _ = parse.completion_request({"model": "m", "prompt": ["once upon"], "logprobs": 2}, "rid", {})
    assert request.call is not None and request.call.prompt == "once upon" and request.call.sampling.top_logprobs == 2
    for bad, param in [({"model": "m"}, "prompt"), ({"model": "m", "prompt": ["a", "b"]}, "prompt"), ({"model": "m", "prompt": "a", "echo": True}, "echo")]:
        with pytest.raises(InvalidRequest) as info:
            parse.completion_request(bad, "rid", {})
        assert info.value.param == param
    request, fmt = parse.embedding_request({"model": "e", "input": "hello", "encoding_format": "base64"}, "rid", {})
    assert request.inputs == ["hello"] and fmt == "base64"
    for bad, param in [({"model": "e"}, "input"), ({"model": "e", "input": [1, 2]}, "input"), ({"model": "e", "input": "x", "encoding_format": "hex"}, "encoding_format")]:
        with pytest.raises(InvalidRequest) as info:
            parse.embedding_request(bad, "rid", {})
        assert info.value.param == param
