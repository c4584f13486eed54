"""Fit a conversation into a token budget by dropping its oldest turns, never its anchors.

Kept always: every system message, and the last user turn with everything
after it (the turn being answered, with its tool calls and results). Older
messages go oldest first, an assistant's tool calls together with their
results (a tool result without its call, or a call without its result, is an
invalid conversation for every chat template). A conversation already within
the budget comes back unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MESSAGE_OVERHEAD_TOKENS = 4  # role markers and separators a chat template adds per message
Message = dict[str, Any]
TokenCounter = Callable[[str], int]


class ContextOverflow(Exception):
    """Even the kept messages exceed the budget."""

    def __init__(self, needed: int, budget: int) -> None:
        self.needed, self.budget = needed, budget
        super().__init__(f"the conversation needs {needed} tokens after trimming; the budget is {budget}")


@dataclass(frozen=True, slots=True)
class Trimmed:
    messages: tuple[Message, ...]
    tokens: int  # of what is kept
    dropped_tokens: int
    dropped_messages: int


def approximate_tokens(chars_per_token: float) -> TokenCounter:
    """A declared approximation for models whose tokenizer is not at hand: UTF-8 bytes over ``chars_per_token``, rounded up."""
    return lambda text: math.ceil(len(text.encode()) / chars_per_token)


def message_texts(message: Message) -> list[str]:
    """The texts of a message a tokenizer sees (its content, and its tool calls as JSON)."""
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    texts = [content] if isinstance(content, str) and content else []
    if message.get("tool_calls"):
        texts.append(json.dumps(message["tool_calls"], sort_keys=True))
    return texts


def message_tokens(message: Message, count: TokenCounter, overhead: int = MESSAGE_OVERHEAD_TOKENS) -> int:
    return overhead + sum(count(text) for text in message_texts(message))


def _groups(messages: Sequence[Message], end: int) -> list[list[int]]:
    """Indices before ``end`` that are not system messages, as droppable units (a tool call with its results is one)."""
    groups: list[list[int]] = []
    i = 0
    while i < end:
        message = messages[i]
        if message.get("role") == "system":
            i += 1
            continue
        group = [i]
        if message.get("role") == "assistant" and message.get("tool_calls"):
            while i + 1 < end and messages[i + 1].get("role") == "tool":
                i += 1
                group.append(i)
        groups.append(group)
        i += 1
    return groups


def _protected_from(messages: Sequence[Message]) -> int:
    """Where the turn being answered starts: the last user message (the whole list when there is none)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            j = i
            # a tool result just before it belongs to a call that must stay with it
            while j > 0 and messages[j - 1].get("role") == "tool":
                j -= 1
            if j < i and j > 0 and messages[j - 1].get("role") == "assistant":
                j -= 1
            return j
    return 0


def trim(messages: Sequence[Message], budget: int, count: TokenCounter, overhead: int = MESSAGE_OVERHEAD_TOKENS) -> Trimmed:
    """The conversation within ``budget`` tokens, oldest droppable units removed first; :class:`ContextOverflow` if impossible.

    ``overhead``: tokens the chat template adds per message, on top of ``count`` of its texts.
    """
    sizes = [message_tokens(m, count, overhead) for m in messages]
    total = sum(sizes)
    if total <= budget:
        return Trimmed(tuple(messages), total, 0, 0)
    dropped: set[int] = set()
    for group in _groups(messages, _protected_from(messages)):
        if total <= budget:
            break
        dropped.update(group)
        total -= sum(sizes[i] for i in group)
    if total > budget:
        raise ContextOverflow(total, budget)
    kept = tuple(m for i, m in enumerate(messages) if i not in dropped)
    return Trimmed(kept, total, sum(sizes[i] for i in dropped), len(dropped))
