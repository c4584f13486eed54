"""Tool calls for local models whose chat template offers tools (Hermes/Qwen style).

Such a template lists the tools in the system prompt and asks the model to
answer a call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
:class:`ToolCallReader` turns the generated text back into OpenAI
``tool_calls``: it holds the first characters of a stream until it can tell a
call from an answer, passes an answer through as it comes, and parses calls
when the stream ends. Text that looks like a call but does not parse is
returned as text, so the client sees what the model said.

:func:`forced_call_schema` is the JSON schema that constrains a generation to
one call when the client requires one (``tool_choice: "required"`` or a named
function); the reader then parses the bare JSON object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from modelyard.errors import InvalidRequest
from modelyard.protocol import Chunk, ModelCall

OPEN_TAG = "<tool_call>"
CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class ToolCallReader:
    """Splits one generation into text and tool calls (feed chunks, then :meth:`finish`)."""

    def __init__(self, forced: bool = False) -> None:
        self.forced = forced  # the generation is constrained to one bare JSON call
        self.held = ""
        self.mode = "call" if forced else "undecided"  # undecided | text | call

    def feed(self, text: str) -> str:
        """The text to pass on now ('' while held or while reading a call)."""
        if self.mode == "text":
            return text
        self.held += text
        if self.mode == "undecided":
            start = self.held.lstrip()
            if start.startswith(OPEN_TAG):
                self.mode = "call"
            elif start and not OPEN_TAG.startswith(start[: len(OPEN_TAG)]):
                self.mode = "text"
                released, self.held = self.held, ""
                return released
        return ""

    def finish(self) -> tuple[str, tuple[dict[str, Any], ...]]:
        """(held text to pass on, the parsed calls): calls when the whole stream parsed as calls, else its text."""
        held, self.held = self.held, ""
        if self.mode == "text" or not held.strip():
            return held, ()
        calls = parse_calls(held, self.forced)
        return ("", calls) if calls else (held, ())


def parse_calls(text: str, bare: bool = False) -> tuple[dict[str, Any], ...]:
    """OpenAI tool-call deltas for every call in ``text`` (``bare``: the text is one JSON call); () if any fails to parse."""
    bodies = [text] if bare else CALL_BLOCK.findall(text)
    calls = []
    for index, body in enumerate(bodies):
        try:
            data = json.loads(body)
        except ValueError:
            return ()
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return ()
        arguments = data.get("arguments", {})
        calls.append(
            {
                "index": index,
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": data["name"], "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)},
            }
        )
    return tuple(calls)


def forced_call_schema(tools: tuple[dict[str, Any], ...], tool_choice: Any) -> dict[str, Any] | None:
    """A JSON schema for one call when ``tool_choice`` requires one (None when the model may answer in text)."""
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t["function"]["name"] == wanted]
    elif tool_choice == "required":
        chosen = list(tools)
    else:
        return None
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "arguments": t["function"].get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
        }
        for t in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def messages_for_template(messages: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Messages as tool-aware templates expect them: a call's arguments as an object, not a JSON string."""
    shaped = []
    for message in messages:
        calls = message.get("tool_calls")
        if not calls:
            shaped.append(message)
            continue
        unpacked = []
        for call in calls:
            function = dict(call.get("function") or {})
            if isinstance(function.get("arguments"), str):
                try:
                    function["arguments"] = json.loads(function["arguments"])
                except ValueError:
                    pass  # the template shows it as given
            unpacked.append({**call, "function": function})
        shaped.append({**message, "tool_calls": unpacked})
    return shaped


def tool_call_plan(call: ModelCall, model_name: str, template_offers_tools: bool) -> tuple[ModelCall, ToolCallReader]:
    """The call as a local engine runs it when the client offers tools, and the reader of its answer.

    A required call (``tool_choice`` "required" or a named function) becomes a
    JSON-schema-constrained generation of one bare call: small models do not
    reliably follow their template's call syntax, a grammar makes them.
    """
    if not template_offers_tools:
        raise InvalidRequest(
            f"model {model_name!r} (llama.cpp) does not take tools (a deployment whose chat template offers them sets 'tools: true')",
            param="tools",
        )
    if call.response_format and call.response_format.get("type") != "text":
        raise InvalidRequest("a local model takes 'tools' or 'response_format', not both", param="response_format")
    schema = forced_call_schema(call.tools, call.tool_choice)
    if schema is not None:
        call = dataclasses.replace(
            call, tool_choice=None, response_format={"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}
        )
    return call, ToolCallReader(forced=schema is not None)


async def with_tool_calls(chunks: AsyncIterator[Chunk], reader: ToolCallReader) -> AsyncGenerator[Chunk, None]:
    """The stream with the model's call text turned into OpenAI tool calls (calls the engine parsed itself pass through)."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if chunk.finish_reason is None:
                text = reader.feed(chunk.text)
                if text or chunk.logprobs or chunk.tool_calls:
                    yield dataclasses.replace(chunk, text=text)
                continue
            text, calls = reader.finish()
            if text:
                yield Chunk(text=text)
            if calls:
                yield Chunk(tool_calls=calls)
            finish = "tool_calls" if calls else chunk.finish_reason
            yield dataclasses.replace(chunk, finish_reason=finish)
