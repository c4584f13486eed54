"""How many waiting embedding requests go into the next batch (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence


def estimate_tokens(text: str) -> int:
    """A packing estimate only (about 4 characters a token); usage comes from the tokenizer."""
    return max(1, len(text) // 4)


def take_count(pending: Sequence[Sequence[str]], max_batch_size: int, max_batch_tokens: int) -> int:
    """The number of leading requests whose texts fit one batch; always at least one."""
    texts = tokens = 0
    for count, request in enumerate(pending):
        size = len(request)
        cost = sum(estimate_tokens(t) for t in request)
        if count > 0 and (texts + size > max_batch_size or tokens + cost > max_batch_tokens):
            return count
        texts += size
        tokens += cost
    return len(pending)
