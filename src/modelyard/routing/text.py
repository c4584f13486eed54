"""The part of a prompt the learned router and intents look at.

Sentence encoders read a few hundred tokens from the start of a text, and
many prompts open with material every prompt shares (few-shot examples, a
fixed preamble) and end with what is being asked. The router therefore embeds
the end of the prompt: its last paragraph, extended back a paragraph at a time
while it is shorter than ``MIN_CHARS``, cut to its last ``MAX_CHARS``. Training
and serving call this same function, so both see the same text.
"""

from __future__ import annotations

import re

MIN_CHARS = 120
MAX_CHARS = 1000  # about the 256 word pieces MiniLM reads
_PARAGRAPH = re.compile(r"\n\s*\n")


def routing_text(text: str) -> str:
    """The tail of ``text`` that carries the question (see the module docstring)."""
    blocks = [b.strip() for b in _PARAGRAPH.split(text.strip()) if b.strip()]
    kept: list[str] = []
    size = 0
    for block in reversed(blocks):
        kept.append(block)
        size += len(block) + 2
        if size >= MIN_CHARS:
            break
    tail = "\n\n".join(reversed(kept))
    return tail[-MAX_CHARS:]
