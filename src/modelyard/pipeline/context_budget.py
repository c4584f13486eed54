"""The context budget stage: fit a conversation into a token budget before any model runs.

The budget is ``max_prompt_tokens`` when given, else the smallest context
window among the models the request may go to (the served model and its
fallbacks) minus what the answer may take (``max_tokens``, or
``reserve_tokens``, at most half the window). Tokens are counted by a declared approximation (UTF-8
bytes over ``chars_per_token``, 3 by default: above the shipped models' real
count on English text, so a trimmed conversation fits their windows).
Older turns are dropped as :mod:`modelyard.shaping.context` describes; the
response says ``x-modelyard-context: trimmed=N tokens`` when anything went.
A conversation that cannot fit gets a 400 naming the budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modelyard.config import FleetConfig, Reader
from modelyard.errors import ContextWindowExceeded
from modelyard.pipeline.slots import StageEnvironment
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.shaping.context import MESSAGE_OVERHEAD_TOKENS, ContextOverflow, approximate_tokens, trim

CONTEXT_HEADER = "x-modelyard-context"


@dataclass(frozen=True, slots=True)
class ContextOptions:
    max_prompt_tokens: int | None = None  # None: fit the target's window
    reserve_tokens: int = 512  # the answer's share of the window when the request sets no max_tokens
    chars_per_token: float = 3.0


def parse_options(r: Reader) -> ContextOptions:
    d = ContextOptions()
    limit = r.get("max_prompt_tokens")
    return ContextOptions(
        max_prompt_tokens=None if limit is None else r.integer("max_prompt_tokens", 1),
        reserve_tokens=r.integer("reserve_tokens", d.reserve_tokens), chars_per_token=r.number("chars_per_token", d.chars_per_token, 0.5),
    )


class ContextBudget:
    def __init__(self, options: ContextOptions, config: FleetConfig) -> None:
        self.options = options
        self.config = config
        self.count = approximate_tokens(options.chars_per_token)

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
            budget = self.budget(request)
            call = request.call
            try:
                if call.messages:
                    result = trim(call.messages, budget, self.count)
                    if result.dropped_messages:
                        request.call = dataclasses.replace(call, messages=result.messages)
                        header = f"trimmed={result.dropped_tokens} tokens; dropped={result.dropped_messages} messages; budget={budget}"
                        request.response_headers[CONTEXT_HEADER] = header
                elif (needed := self.count(call.prompt) + MESSAGE_OVERHEAD_TOKENS) > budget:
                    raise ContextOverflow(needed, budget)
            except ContextOverflow as exc:
                raise ContextWindowExceeded(
                    f"the prompt needs about {exc.needed} tokens even after dropping older turns; the context budget for "
                    f"'{request.model}' is {exc.budget} tokens", param="messages",
                ) from None
            return await next_handler(request)

        return handle


class ContextBudgetFactory:
    """The ``context_budget`` stage kind."""

    default_slot = "after_route"

    def build(self, options: Reader, environment: StageEnvironment) -> Stage:
        return ContextBudget(parse_options(options), environment.config).stage
