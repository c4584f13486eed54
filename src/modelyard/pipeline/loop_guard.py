"""The loop guard stage: an agent repeating a tool call, or cycling through a few, gets told or stopped.

Actions (``action``): ``warn`` passes the request and says
``x-modelyard-loop: identical call to get_weather x3``; ``instruct`` also adds
a system message telling the model to stop calling tools and answer with what
it has; ``block`` refuses the step with a 400, code ``loop_detected``,
naming the loop. Detection is :mod:`modelyard.shaping.loops`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modelyard.config import Reader
from modelyard.errors import InvalidRequest
from modelyard.pipeline.slots import StageEnvironment
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.shaping.loops import LoopPolicy, find_loop

LOOP_HEADER = "x-modelyard-loop"
INSTRUCTION = (
    "You are repeating tool calls ({loop}) without making progress. Do not call any tool again for this request: "
    "answer the user now with what you have, and say what is missing."
)


@dataclass(frozen=True, slots=True)
class LoopOptions:
    policy: LoopPolicy
    action: str = "warn"  # warn | instruct | block


def parse_options(r: Reader) -> LoopOptions:
    d = LoopPolicy()
    policy = LoopPolicy(
        max_identical=r.integer("max_identical", d.max_identical, minimum=2), max_period=r.integer("max_period", d.max_period, minimum=2),
        cycle_repeats=r.integer("cycle_repeats", d.cycle_repeats, minimum=2),
    )
    return LoopOptions(policy, r.choice("action", ("warn", "instruct", "block"), "warn"))


class LoopGuard:
    def __init__(self, options: LoopOptions) -> None:
        self.options = options

    def stage(self, next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            loop = find_loop(request.call.messages, self.options.policy) if request.call is not None else None
            if loop is None:
                return await next_handler(request)
            described = loop.describe()
            if self.options.action == "block":
                raise InvalidRequest(f"agent loop detected ({described}); this step is refused", code="loop_detected")
            request.response_headers[LOOP_HEADER] = described
            if self.options.action == "instruct" and request.call is not None:
                note = {"role": "system", "content": INSTRUCTION.format(loop=described)}
                request.call = dataclasses.replace(request.call, messages=(*request.call.messages, note))
            return await next_handler(request)

        return handle


class LoopGuardFactory:
    """The ``loop_guard`` stage kind."""

    default_slot = "before_route"

    def build(self, options: Reader, environment: StageEnvironment) -> Stage:
        return LoopGuard(parse_options(options)).stage
