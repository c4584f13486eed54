"""Deferrable work yields a local engine while urgent requests wait for their first token.

llama.cpp's server cannot pause or reprioritize a sequence it is decoding:
every step decodes all running sequences, so an interactive prompt that
arrives beside a saturating batch job shares each step with the batch's
tokens and waits several times longer for its first token. What modelyard
can do is what vLLM does with a preempted sequence (recompute): stop the
batch request (close its stream; the engine frees the slot), and later send
it again as its prompt plus the text it had produced, to the same slot, whose
cache still holds those tokens, so the resumed request re-reads only a few.
The batch client sees one response, with a pause in it.

:class:`YieldGate` is the coordination (no I/O): urgent requests announce
themselves until their first token; deferrable streams subscribe and are told
to yield; they resume when no urgent request is waiting. :func:`continuation`
is the pure rewrite of a call into its resumed form.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from modelyard.protocol import ModelCall


class YieldGate:
    """Urgent requests waiting for their first token, and the deferrable streams that must yield to them."""

    def __init__(self) -> None:
        self._waiting = 0
        self._clear = asyncio.Event()
        self._clear.set()
        self._listeners: set[asyncio.Future[None]] = set()
        self.preemptions = 0  # deferrable segments stopped so far (health and tests read it)

    @property
    def urgent_waiting(self) -> int:
        """Urgent requests sent and not yet at their first token."""
        return self._waiting

    def urgent_started(self) -> None:
        """An urgent request is about to be sent: every deferrable stream is told to yield."""
        self._waiting += 1
        self._clear.clear()
        for listener in self._listeners:
            if not listener.done():
                listener.set_result(None)

    def urgent_answered(self) -> None:
        """An urgent request got its first token (or ended): deferrable work may resume when none waits."""
        self._waiting = max(0, self._waiting - 1)
        if self._waiting == 0:
            self._clear.set()

    async def wait_clear(self) -> None:
        """Return when no urgent request is waiting for its first token."""
        await self._clear.wait()

    def listen(self) -> asyncio.Future[None]:
        """A future done when an urgent request starts (at once if one is already waiting); pass it to :meth:`forget`."""
        listener: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiting:
            listener.set_result(None)
        self._listeners.add(listener)
        return listener

    def forget(self, listener: asyncio.Future[None]) -> None:
        self._listeners.discard(listener)


def preemptible(call: ModelCall) -> bool:
    """Whether a call can be stopped and resumed from its text without changing what it may answer.

    Not: tool calls and response formats (the grammar would restart mid-answer), and seeded
    sampling (a resumed sequence would draw different numbers than an unbroken one, so the same
    seed would give different answers under different load).
    """
    return call.deferrable and not call.tools and call.response_format is None and call.sampling.seed is None


def continuation(call: ModelCall, produced: str, produced_tokens: int) -> ModelCall:
    """``call`` resumed after it produced ``produced`` (``produced_tokens`` tokens).

    Chat: the text becomes the start of the assistant's message (llama.cpp's server continues
    a final assistant message instead of opening a new one, and streams only what follows).
    Completion: the text is appended to the prompt. ``max_tokens`` shrinks by what was produced.
    """
    sampling = call.sampling
    if sampling.max_tokens is not None:
        sampling = replace(sampling, max_tokens=max(1, sampling.max_tokens - produced_tokens))
    if not produced:
        return replace(call, sampling=sampling)
    if call.kind == "chat":
        return replace(call, sampling=sampling, messages=(*call.messages, {"role": "assistant", "content": produced}))
    return replace(call, sampling=sampling, prompt=call.prompt + produced)
