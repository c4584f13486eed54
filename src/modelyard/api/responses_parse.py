"""OpenAI's Responses API request, validated and translated to chat messages.

``input`` is a string (one user message) or a list of items: messages
(``role`` and ``content`` as a string or ``input_text`` / ``output_text``
parts), ``function_call`` items (the model's earlier calls) and
``function_call_output`` items (their results). ``instructions`` becomes the
system message. Tools are function tools (``{type: function, name,
parameters}``); built-in tools (web search, file search, computer use) are
refused with a 400 naming them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelyard.api.parse import number_field
from modelyard.errors import InvalidRequest
from modelyard.pipeline.types import Request
from modelyard.protocol import ModelCall, Sampling

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text", "text")


@dataclass(frozen=True, slots=True)
class ResponsesCall:
    """The request, and what the response object echoes back."""

    request: Request
    store: bool
    previous_response_id: str | None
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_choice: Any
    metadata: dict[str, Any]


def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(f"{where}: expected a string or a list of text parts", where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _fail(f"{where}[{j}]: unsupported content part {kind!r} (this fleet accepts text only)", where)
        texts.append(part["text"])
    return "".join(texts)


def _item(item: Any, index: int) -> dict[str, Any]:
    where = f"input[{index}]"
    if not isinstance(item, dict):
        raise _fail(f"{where}: expected an object", where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise _fail(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        return {"role": "system" if role == "developer" else role, "content": _content(item.get("content"), f"{where}.content")}
    if kind == "function_call":
        if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
            raise _fail(f"{where}: a function_call needs call_id, name and arguments (strings)", where)
        call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
            raise _fail(f"{where}: a function_call_output needs call_id and output (strings)", where)
        return {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
    raise _fail(f"{where}.type: unsupported item type {kind!r} (message, function_call, function_call_output)", f"{where}.type")


def input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's own turns (not the instructions, not an earlier response's)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise _fail("input: required, a string or a non-empty list of items", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        message = _item(item, i)
        previous = messages[-1] if messages else None
        if message.get("tool_calls") and previous is not None and previous.get("tool_calls") and previous.get("content") is None:
            previous["tool_calls"] += message["tool_calls"]  # parallel calls are one assistant turn
        else:
            messages.append(message)
    return messages


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[dict[str, Any], ...], Any]:
    """(the tools as given, the same as chat tools, the chat tool_choice)."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _fail("tools: expected a list", "tools")
    chat = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _fail(f"tools[{i}]: only function tools are supported here, got {kind!r}", f"tools[{i}]")
        fn = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        chat.append({"type": "function", "function": fn})
    choice = body.get("tool_choice", "auto")
    if choice in ("auto", "none", "required"):
        mapped: Any = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        mapped = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _fail("tool_choice: expected auto, none, required or {type: function, name}", "tool_choice")
    return tools, tuple(chat), mapped


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_output_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail("max_output_tokens: expected an integer >= 1", "max_output_tokens")
    return value


def _text_format(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "output"), "schema": fmt["schema"], "strict": bool(fmt.get("strict"))}}
    raise _fail("text.format: expected {type: text | json_object | json_schema, schema}", "text.format")


def responses_request(body: Any, request_id: str, headers: dict[str, str], history: list[dict[str, Any]]) -> ResponsesCall:
    """``POST /v1/responses``'s body as a pipeline request; ``history``: the conversation of ``previous_response_id``, if any."""
    if not isinstance(body, dict):
        raise _fail("the body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model: required, a string", "model")
    stream, store = body.get("stream", False), body.get("store", True)
    if not isinstance(stream, bool) or not isinstance(store, bool):
        raise _fail("stream and store: expected true or false", "stream")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _fail("instructions: expected a string", "instructions")
    tools, chat_tools, tool_choice = _tools(body)
    turns = history + input_messages(body)
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + turns
    sampling = Sampling(max_tokens=_max_tokens(body), temperature=number_field(body, "temperature", 0.0, 2.0), top_p=number_field(body, "top_p", 0.0, 1.0))
    call = ModelCall(
        kind="chat", model=model, sampling=sampling, messages=tuple(messages), response_format=_text_format(body),
        tools=chat_tools if tool_choice != "none" else (), tool_choice=(tool_choice if chat_tools else None) if tool_choice != "none" else None,
        user=body.get("user") if isinstance(body.get("user"), str) else None,
    )
    previous = body.get("previous_response_id")
    raw_metadata = body.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    return ResponsesCall(
        Request("chat", model, request_id, call=call, stream=stream, headers=headers), store, previous if isinstance(previous, str) else None,
        instructions, tools, body.get("tool_choice", "auto"), metadata,
    )
