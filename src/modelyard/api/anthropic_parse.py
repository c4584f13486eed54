"""Anthropic's Messages API request, validated and translated to the internal call.

Content blocks map onto the chat messages every backend takes: ``text``
blocks join into the message's text; an assistant's ``tool_use`` blocks
become its ``tool_calls`` (``input`` serialised once, as JSON); a user's
``tool_result`` blocks become ``tool`` messages placed before that user's
text. ``system`` becomes the first message. Images and documents are refused
with a 400 naming the block: the fleet is text-only.
"""

from __future__ import annotations

import json
from typing import Any

from modelyard.api.parse import number_field
from modelyard.errors import InvalidRequest
from modelyard.pipeline.types import Request
from modelyard.protocol import ModelCall, Sampling

MAX_TOKENS_LIMIT = 1 << 20


def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _text_of(content: Any, where: str) -> str:
    """A string, or a list of text blocks, as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(f"{where}: expected a string or a list of text blocks", where)
    parts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _fail(f"{where}.{j}: expected a text block; this fleet accepts text only", where)
        parts.append(block["text"])
    return "".join(parts)


def _user(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list) or not content:
        raise _fail(f"{where}.content: expected a string or a non-empty list of content blocks", f"{where}.content")
    results, texts = [], []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result" and isinstance(block.get("tool_use_id"), str):
            body = block.get("content", "")
            text = _text_of(body, f"{where}.content.{j}.content") if body else ""
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": ("Error: " + text) if block.get("is_error") else text})
        else:
            raise _fail(f"{where}.content.{j}: unsupported block type {kind!r} (text and tool_result are accepted)", f"{where}.content")
    return results + ([{"role": "user", "content": "".join(texts)}] if texts else [])


def _assistant(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _fail(f"{where}.content: expected a string or a list of content blocks", f"{where}.content")
    texts, calls = [], []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and isinstance(block.get("id"), str) and isinstance(block.get("name"), str) and isinstance(block.get("input"), dict):
            calls.append({"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": json.dumps(block["input"])}})
        else:
            raise _fail(f"{where}.content.{j}: unsupported or incomplete block {kind!r} (text and tool_use with id, name, input)", f"{where}.content")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def messages_of(body: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages: expected a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        out.append({"role": "system", "content": _text_of(system, "system")})
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            out += _user(message, where)
        elif role == "assistant":
            out.append(_assistant(message, where))
        else:
            raise _fail(f"{where}.role: expected 'user' or 'assistant', got {role!r}", f"{where}.role")
    return tuple(out)


def _tools(body: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], Any]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _fail("tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
            raise _fail(f"tools.{i}: expected an object with name and input_schema", f"tools.{i}")
        fn = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if choice is None or kind == "auto":
        mapped: Any = "auto" if out else None
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        mapped = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        mapped = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _fail("tool_choice: expected {type: auto | any | none | tool, name}", "tool_choice")
    return tuple(out), mapped


def _sampling(body: dict[str, Any]) -> Sampling:
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise _fail("max_tokens: required, an integer >= 1", "max_tokens")
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _fail("stop_sequences: expected a list of non-empty strings", "stop_sequences")
    return Sampling(max_tokens=max_tokens, temperature=number_field(body, "temperature", 0.0, 1.0), top_p=number_field(body, "top_p", 0.0, 1.0), stop=tuple(stops))


def messages_request(body: Any, request_id: str, headers: dict[str, str]) -> Request:
    """``POST /v1/messages``'s body as a pipeline request (400 naming the field on anything malformed)."""
    if not isinstance(body, dict):
        raise _fail("the body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model: required, a string", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _fail("stream: expected true or false", "stream")
    tools, tool_choice = _tools(body)
    metadata = body.get("metadata") or {}
    user = metadata.get("user_id") if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) else None
    call = ModelCall(
        kind="chat", model=model, sampling=_sampling(body), messages=messages_of(body),
        tools=tools if tool_choice != "none" else (), tool_choice=tool_choice if tool_choice != "none" else None, user=user,
    )
    return Request("chat", model, request_id, call=call, stream=stream, headers=headers)


def count_request(body: Any) -> tuple[str, tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """``POST /v1/messages/count_tokens``: the model, the messages and the tools to count."""
    if not isinstance(body, dict):
        raise _fail("the body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model: required, a string", "model")
    tools, _ = _tools(body)
    return model, messages_of(body), tools
