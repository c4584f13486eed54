"""The <tool_call> reader for local models, on hand-built streams."""

from __future__ import annotations

import json

from modelyard.backends.tool_calls import ToolCallReader, forced_call_schema, messages_for_template, parse_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def read(pieces: list[str], forced: bool = False) -> tuple[str, tuple[dict, ...]]:
    reader = ToolCallReader(forced)
    passed = "".join(reader.feed(p) for p in pieces)
    tail, calls = reader.finish()
    return passed + tail, calls


def test_an_answer_passes_through_as_soon_as_it_is_not_a_call() -> None:
    reader = ToolCallReader()
    assert reader.feed(" ") == ""  # could still open a call
    assert reader.feed("<to") == ""
    assert reader.feed("p") == " <top"  # not '<tool_call>': released at once, from then on unbuffered
    assert reader.feed(" hat") == " hat"
    assert reader.finish() == ("", ())


def test_calls_split_across_chunks_are_parsed_at_the_end() -> None:
    text, calls = read(["<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool_call>\n',
                        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'])
    assert text == ""
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [c["index"] for c in calls] == [0, 1]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_") and calls[0]["id"] != calls[1]["id"]


def test_a_call_cut_off_before_its_closing_tag_still_parses_when_its_json_is_whole() -> None:
    assert read(['<tool_call>{"name": "get_time", "arguments": {}}'])[1][0]["function"]["name"] == "get_time"


def test_a_malformed_call_comes_back_as_the_text_the_model_wrote() -> None:
    raw = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    assert read([raw]) == (raw, ())
    assert parse_calls('<tool_call>["not", "an", "object"]</tool_call>') == ()


def test_a_forced_call_is_bare_json() -> None:
    text, calls = read(['{"name": "get_weather", "arguments": {"city": "Oslo"}}'], forced=True)
    assert text == "" and calls[0]["function"]["arguments"] == '{"city": "Oslo"}'


def test_forced_call_schema() -> None:
    assert forced_call_schema((WEATHER, TIME), "auto") is None
    assert forced_call_schema((WEATHER, TIME), None) is None
    named = forced_call_schema((WEATHER, TIME), {"type": "function", "function": {"name": "get_time"}})
    assert named == {"type": "object", "properties": {"name": {"const": "get_time"}, "arguments": {"type": "object", "properties": {}}},
                     "required": ["name", "arguments"]}
    required = forced_call_schema((WEATHER, TIME), "required")
    assert required is not None and [o["properties"]["name"]["const"] for o in required["anyOf"]] == ["get_weather", "get_time"]


def test_earlier_calls_are_shown_to_the_template_with_object_arguments() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]})
    shaped = messages_for_template(messages)
    assert shaped[0] == messages[0]
    assert shaped[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert call["function"]["arguments"] == '{"city": "Paris"}'  # the request itself is not changed
