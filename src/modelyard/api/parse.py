"""Validate OpenAI request bodies into pipeline requests.

Every rejection is an :class:`InvalidRequest` that names the parameter, the way
OpenAI's API does. Unknown fields are ignored, as OpenAI clients send many.
"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.errors import InvalidRequest
from modelyard.pipeline.types import Request
from modelyard.protocol import ModelCall, Sampling

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MAX_N = 8
MAX_STOPS = 4
MAX_INT32 = 2**31 - 1  # engines keep token counts in C ints
INT64 = (-(2**63), 2**63 - 1)


def parse_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    return data


def _missing(name: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def _string(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str) or (required and not value):
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


def number_field(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    """``body[name]`` when it is a number in [low, high]; None when absent; 400 naming it otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidRequest(f"'{name}' must be an integer {bound}, got {value!r}", param=name)
    return value


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean, got {value!r}", param=name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and len(value) <= MAX_STOPS and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise InvalidRequest(f"'stop' must be a string or a list of at most {MAX_STOPS} strings", param="stop")


def _sampling(body: dict[str, Any], logprobs: bool, top_logprobs: int) -> Sampling:
    for name in ("frequency_penalty", "presence_penalty"):
        number_field(body, name, -2.0, 2.0)
    max_tokens = _integer(body, "max_tokens", 1, MAX_INT32)
    max_completion = _integer(body, "max_completion_tokens", 1, MAX_INT32)
    return Sampling(
        max_tokens=max_completion if max_completion is not None else max_tokens,
        temperature=number_field(body, "temperature", 0.0, 2.0),
        top_p=number_field(body, "top_p", 0.0, 1.0),
        stop=_stop(body),
        seed=_integer(body, "seed", *INT64),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=_boolean(body, "ignore_eos"),
    )


def _message(index: int, message: Any) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"'{where}.content[{j}]' must be a text part; this fleet accepts text only", param=f"{where}.content"
                )
            texts.append(part["text"])
        content = "".join(texts)
    if content is None and not (role == "assistant" and message.get("tool_calls")):
        raise _missing(f"{where}.content")
    if content is not None and not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string or a list of text parts", param=f"{where}.content")
    return {**message, "content": content}


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    value = body.get("response_format")
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest("'response_format.type' must be one of text, json_object, json_schema", param="response_format")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict) or not isinstance(spec.get("name", ""), str):
            raise InvalidRequest("'response_format.json_schema' must be an object with 'name' and a 'schema' object", param="response_format.json_schema")
    return None if kind == "text" else value


def _tools(body: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], Any]:
    tools = body.get("tools")
    if tools is None:
        return (), None
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list", param="tools")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or tool.get("type") != "function":
            raise InvalidRequest(f"'tools[{i}]' must be {{'type': 'function', 'function': {{'name': ...}}}}", param=f"tools[{i}]")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("none", "auto", "required") and not isinstance(choice, dict):
        raise InvalidRequest("'tool_choice' must be 'none', 'auto', 'required' or an object", param="tool_choice")
    return tuple(tools), choice


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    if not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    return stream, _boolean(options, "include_usage")


def chat_request(body: dict[str, Any], request_id: str, headers: dict[str, str]) -> tuple[Request, bool]:
    """A chat completion request; the bool is ``stream_options.include_usage``."""
    model = _string(body, "model", required=True)
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    logprobs = _boolean(body, "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, 20) or 0
    if top_logprobs and not logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true", param="top_logprobs")
    tools, tool_choice = _tools(body)
    stream, include_usage = _stream(body)
    call = ModelCall(
        kind="chat",
        model=model or "",
        sampling=_sampling(body, logprobs, top_logprobs),
        messages=tuple(_message(i, m) for i, m in enumerate(messages)),
        response_format=_response_format(body),
        tools=tools if tool_choice != "none" else (),
        tool_choice=tool_choice if tool_choice != "none" else None,
        user=_string(body, "user"),
    )
    n = _integer(body, "n", 1, MAX_N) or 1
    return Request("chat", model or "", request_id, call=call, n=n, stream=stream, headers=headers), include_usage


def completion_request(body: dict[str, Any], request_id: str, headers: dict[str, str]) -> tuple[Request, bool]:
    """A legacy text completion request."""
    model = _string(body, "model", required=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is None:
        raise _missing("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string (or a list holding one string)", param="prompt")
    if _boolean(body, "echo"):
        raise InvalidRequest("'echo' is not supported", param="echo")
    if body.get("suffix") is not None:
        raise InvalidRequest("'suffix' is not supported", param="suffix")
    top = _integer(body, "logprobs", 0, 5)
    stream, include_usage = _stream(body)
    call = ModelCall(
        kind="completion",
        model=model or "",
        sampling=_sampling(body, top is not None, top or 0),
        prompt=prompt,
        user=_string(body, "user"),
    )
    n = _integer(body, "n", 1, MAX_N) or 1
    return Request("completion", model or "", request_id, call=call, n=n, stream=stream, headers=headers), include_usage


def embedding_request(body: dict[str, Any], request_id: str, headers: dict[str, str]) -> tuple[Request, str]:
    """An embeddings request; the str is the encoding format (float or base64)."""
    model = _string(body, "model", required=True)
    raw = body.get("input")
    if raw is None:
        raise _missing("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise InvalidRequest("'input' must be a string or a non-empty list of strings (token arrays are not supported)", param="input")
    if len(inputs) > 2048:
        raise InvalidRequest("'input' may hold at most 2048 items", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    return Request("embedding", model or "", request_id, inputs=inputs, headers=headers), fmt
