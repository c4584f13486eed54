"""What makes two requests the same answer: the canonical cache key, and when a request may not be cached at all.

The key covers everything that changes the answer: the call's kind, the model
as served (not the alias asked for), the messages or prompt, every sampling
parameter, the response format and the tools. The scope (a tenant, or the
whole fleet) is part of the key, so one tenant never reads another's answers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from modelyard.protocol import ModelCall

KEY_VERSION = "1"  # bump when the canonical form changes, so old entries are never read as new ones


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Which requests a cache stage may answer or fill."""

    sampled: bool = False  # also cache requests sampled at temperature > 0 without a seed
    semantic_multi_turn: bool = False  # semantic lookups for conversations with earlier turns


def canonical_call(call: ModelCall, served_model: str, with_messages: bool = True) -> dict[str, Any]:
    """The request as plain data, in one order, without what does not change the answer (``user``)."""
    sampling = call.sampling
    body: dict[str, Any] = {
        "v": KEY_VERSION, "kind": call.kind, "model": served_model, "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(sampling.stop), "seed": sampling.seed,
        "logprobs": sampling.logprobs, "top_logprobs": sampling.top_logprobs, "ignore_eos": sampling.ignore_eos,
        "response_format": call.response_format, "tools": list(call.tools), "tool_choice": call.tool_choice,
    }
    if with_messages:
        body["messages"] = list(call.messages)
        body["prompt"] = call.prompt
    return body


def digest(data: dict[str, Any], scope: str) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{scope}\x00{text}".encode()).hexdigest()


def exact_key(call: ModelCall, served_model: str, scope: str) -> str:
    """The exact cache's key: the whole canonical request plus its scope."""
    return digest(canonical_call(call, served_model), scope)


def semantic_scope(call: ModelCall, served_model: str, scope: str) -> str:
    """Requests whose prompts may be compared: same model, same parameters, same scope; only the text differs."""
    context = [m for m in call.messages if m.get("role") == "system"]
    return digest(canonical_call(call, served_model, with_messages=False) | {"system": context}, scope)


def bypass_reason(call: ModelCall | None, n: int, policy: CachePolicy) -> str | None:
    """Why this request is neither looked up nor stored (None: it may be)."""
    if call is None:
        return "not a generation"
    if n > 1:
        return "n > 1"
    if call.sampling.logprobs:
        return "logprobs asked for"
    sampled = call.sampling.temperature is None or call.sampling.temperature > 0  # OpenAI's default temperature is 1
    if sampled and call.sampling.seed is None and not policy.sampled:
        return "sampled without a seed (temperature > 0)"
    return None


def semantic_text(call: ModelCall, policy: CachePolicy) -> str | None:
    """The text a semantic lookup compares: the one user turn (system messages are in the scope), or None.

    Conversations with earlier turns, tool messages or tools offered are never
    compared by meaning: the same last question means something else after
    another history (the stale-replay failure of multi-turn semantic caches).
    """
    if call.tools:
        return None
    if call.prompt:
        return call.prompt
    turns = [m for m in call.messages if m.get("role") != "system"]
    if not turns or any(m.get("role") not in ("user", "assistant") for m in turns):
        return None
    if len(turns) > 1 and not policy.semantic_multi_turn:
        return None
    last = turns[-1]
    content = last.get("content")
    return content if last.get("role") == "user" and isinstance(content, str) and content.strip() else None
