"""The context budget stage: fit a conversation into a token budget before any model runs.

The budget is ``max_prompt_tokens`` when given, else the smallest context
window among the models the request may go to (the served model and its
fallbacks) minus what the answer may take (``max_tokens``, or
``reserve_tokens``, at most half the window). Tokens are counted by the served model's own
tokenizer when its deployment's engine offers one (llama.cpp's server: a
``/tokenize`` call per text, plus ``template_tokens_per_message`` per message
and ``template_tokens`` once for what the chat template adds), and otherwise
by a declared approximation (UTF-8 bytes over ``chars_per_token``, 3 by
default: above the shipped models' real count on English text).
Older turns are dropped as :mod:`modelyard.shaping.context` describes; the
response says ``x-modelyard-context: trimmed=N tokens`` when anything went.
A conversation that cannot fit gets a 400 naming the budget.

With ``summarize_with`` (a chat model of the fleet) the dropped turns are not
just dropped: that model summarises them, and the summary goes in as a
system message after the conversation's own, marked as a summary and naming
the model that wrote it (its cost is the request's). The budget keeps
``summary_tokens`` free for it. If the summary cannot be written, the turns
are dropped as without it, and the header says ``summary=failed``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from modelyard.backends.base import TokenCounter
from modelyard.config import FleetConfig, Reader
from modelyard.errors import ContextWindowExceeded, ModelyardError
from modelyard.pipeline.dispatch import Dispatcher
from modelyard.pipeline.runtime import token_counter
from modelyard.pipeline.slots import StageEnvironment
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.protocol import ModelCall, Sampling
from modelyard.shaping.context import MESSAGE_OVERHEAD_TOKENS, ContextOverflow, approximate_tokens, message_texts, trim
from modelyard.shaping.context import TokenCounter as Counter

CONTEXT_HEADER = "x-modelyard-context"
MAX_TRANSCRIPT_CHARS = 12_000  # the newest part of what was dropped, if more
SUMMARY_PROMPT = (
    "Summarise the conversation below in a few sentences: the facts, decisions and open questions a reader needs to "
    "continue it. Write only the summary."
)
log = logging.getLogger("modelyard.context")


@dataclass(frozen=True, slots=True)
class ContextOptions:
    max_prompt_tokens: int | None = None  # None: fit the target's window
    reserve_tokens: int = 512  # the answer's share of the window when the request sets no max_tokens
    chars_per_token: float = 3.0
    tokenizer: str = "auto"  # auto: the engine's own when it has one; approximate: always chars_per_token
    template_tokens_per_message: int = 8  # role markers and separators, with exact counts
    template_tokens: int = 32  # once per prompt: the generation prompt and any default system text
    summarize_with: str | None = None  # a chat model that summarises dropped turns (None: they are dropped)
    summary_tokens: int = 200  # the summary's length limit, kept free in the budget


def parse_options(r: Reader) -> ContextOptions:
    d = ContextOptions()
    limit = r.get("max_prompt_tokens")
    return ContextOptions(
        max_prompt_tokens=None if limit is None else r.integer("max_prompt_tokens", 1),
        reserve_tokens=r.integer("reserve_tokens", d.reserve_tokens), chars_per_token=r.number("chars_per_token", d.chars_per_token, 0.5),
        tokenizer=r.choice("tokenizer", ("auto", "approximate"), d.tokenizer),
        template_tokens_per_message=r.integer("template_tokens_per_message", d.template_tokens_per_message, minimum=0),
        template_tokens=r.integer("template_tokens", d.template_tokens, minimum=0),
        summarize_with=_summarizer(r), summary_tokens=r.integer("summary_tokens", d.summary_tokens, minimum=16),
    )


def _summarizer(r: Reader) -> str | None:
    name = r.get("summarize_with")
    if name is None:
        return None
    return str(name) if isinstance(name, str) and name else r.string("summarize_with")


@dataclass(frozen=True, slots=True)
class Counting:
    count: Counter
    per_message: int  # template tokens each message adds
    fixed: int  # template tokens the prompt adds once
    source: str  # engine | approximate


class ContextBudget:
    def __init__(self, options: ContextOptions, config: FleetConfig, dispatcher: Dispatcher | None) -> None:
        self.options = options
        self.config = config
        self.dispatcher = dispatcher
        self.count = approximate_tokens(options.chars_per_token)

    def _engine_counter(self, model: str) -> TokenCounter | None:
        if self.options.tokenizer != "auto" or self.dispatcher is None or (config := self.config.model(model)) is None:
            return None
        return token_counter(self.dispatcher.fleet, config)

    async def counter(self, request: Request) -> Counting:
        """How to count: exact counts of the request's texts from the engine, or the approximation."""
        assert request.call is not None
        engine = self._engine_counter(request.served_model or "")
        if engine is not None:
            texts = sorted({t for m in request.call.messages for t in message_texts(m)} | ({request.call.prompt} if request.call.prompt else set()))
            try:
                counts = dict(zip(texts, await engine.count_tokens(texts), strict=True))
            except ModelyardError as exc:
                log.warning("context budget: %s; counting by the approximation", exc.message)
            else:
                exact = Counting(lambda text: counts.get(text, self.count(text)), self.options.template_tokens_per_message, self.options.template_tokens, "engine")
                return exact
        return Counting(self.count, MESSAGE_OVERHEAD_TOKENS, 0, "approximate")

    def budget(self, request: Request) -> int:
        assert request.call is not None
        windows = [m.context_window for m in (self.config.model(n) for n in request.plan or [request.served_model or ""]) if m is not None]
        if not windows:
            fit = None
        else:  # the answer's share: max_tokens, else the reserve (at most half the window)
            answer = request.call.sampling.max_tokens or min(self.options.reserve_tokens, min(windows) // 2)
            fit = min(windows) - answer
        limits = [v for v in (self.options.max_prompt_tokens, fit) if v is not None]
        return max(0, min(limits)) if limits else 1 << 30

    def stage(self, next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            if request.call is None:
                return await next_handler(request)
            counting = await self.counter(request)
            budget = self.budget(request) - counting.fixed
            call = request.call
            try:
                if call.messages:
                    result = trim(call.messages, budget, counting.count, counting.per_message)
                    if result.dropped_messages:
                        note = await self._shorten(request, result.messages, budget, counting)
                        header = f"trimmed={result.dropped_tokens} tokens; dropped={result.dropped_messages} messages; budget={budget}; counted={counting.source}"
                        request.response_headers[CONTEXT_HEADER] = header + note
                elif (needed := counting.count(call.prompt) + counting.per_message) > budget:
                    raise ContextOverflow(needed, budget)
            except ContextOverflow as exc:
                raise ContextWindowExceeded(
                    f"the prompt needs about {exc.needed} tokens even after dropping older turns; the context budget for "
                    f"'{request.model}' is {exc.budget} tokens", param="messages",
                ) from None
            return await next_handler(request)

        return handle


    async def _shorten(self, request: Request, trimmed: tuple[dict[str, Any], ...], budget: int, counting: Counting) -> str:
        """Replace the conversation with ``trimmed`` (or, when configured, a shorter cut plus a summary of what went); a header suffix."""
        assert request.call is not None
        messages = request.call.messages
        model = self.options.summarize_with
        if model is None:
            request.call = dataclasses.replace(request.call, messages=trimmed)
            return ""
        room = budget - self.options.summary_tokens - counting.per_message
        kept = trim(messages, room, counting.count, counting.per_message).messages
        dropped = [m for m in messages if not any(m is k for k in kept)]
        summary = await self._summarize(request, model, dropped)
        if summary is None:
            request.call = dataclasses.replace(request.call, messages=trimmed)
            return "; summary=failed"
        head = [m for m in kept if m.get("role") == "system"]
        note = {"role": "system", "content": f"Summary of {len(dropped)} earlier messages of this conversation (written by {model}): {summary}"}
        request.call = dataclasses.replace(request.call, messages=(*head, note, *kept[len(head):]))
        return f"; summary={model}"

    async def _summarize(self, request: Request, model: str, dropped: list[dict[str, object]]) -> str | None:
        """The summariser's text for ``dropped`` (its attempts are charged to ``request``), or None when it cannot answer."""
        if self.dispatcher is None:
            return None
        transcript = "\n".join(f"{m.get('role')}: {text}" for m in dropped for text in message_texts(m))[-MAX_TRANSCRIPT_CHARS:]
        call = ModelCall(
            kind="chat", model=model, sampling=Sampling(max_tokens=self.options.summary_tokens, temperature=0.0),
            messages=({"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": transcript}),
        )
        probe = Request("chat", model, f"{request.request_id}:summary", call=call, workload=request.workload, tenant=request.tenant, deadline=request.deadline)
        try:
            text = "".join([chunk.text async for chunk in self.dispatcher.complete(probe, call, [model])]).strip()
        except ModelyardError as exc:
            log.warning("context budget: %s could not summarise (%s); dropping the turns instead", model, exc.message)
            return None
        finally:
            request.overhead.extend(probe.attempts)
        return text or None


class ContextBudgetFactory:
    """The ``context_budget`` stage kind."""

    default_slot = "after_route"

    def build(self, options: Reader, environment: StageEnvironment) -> Stage:
        parsed = parse_options(options)
        if parsed.summarize_with is not None:
            summarizer = environment.config.model(parsed.summarize_with)
            if summarizer is None or summarizer.kind != "chat":
                raise options.fail("summarize_with", f"expected a chat model of the fleet, got {parsed.summarize_with!r}")
        return ContextBudget(parsed, environment.config, environment.dispatcher).stage
