"""Each configured stage with hand-built requests and a scripted next handler (no server, no model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelyard.config import ConfigError, parse_config
from modelyard.config.reader import Reader
from modelyard.errors import ContextWindowExceeded, InvalidRequest
from modelyard.pipeline.context_budget import ContextBudgetFactory
from modelyard.pipeline.pii_filter import PiiFilterFactory
from modelyard.pipeline.response_cache import ResponseCacheFactory
from modelyard.pipeline.slots import StageEnvironment, build_stages
from modelyard.pipeline.stage_registry import default_registry
from modelyard.pipeline.streams import gather_streams
from modelyard.pipeline.types import Attempt, Request, Response
from modelyard.protocol import Chunk, ModelCall, Sampling, Usage

FLEET = {
    "models": {
        "m": {"kind": "chat", "context_window": 300, "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "price": {"input_per_1m": 1, "output_per_1m": 1}}]},
        "small": {"kind": "chat", "context_window": 100, "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]},
    },
}
CONFIG = parse_config(FLEET)


class Upstream:
    """The next handler: answers with scripted chunks, records the requests it saw."""

    def __init__(self, text: str = "an answer", fail: bool = False, tool_calls: bool = False) -> None:
        self.seen: list[Request] = []
        self.text, self.fail, self.tool_calls = text, fail, tool_calls

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        request.attempts.append(Attempt("m", "m/0", 0.0, outcome="ok", usage=Usage(10, 5)))
        return Response(model="m", deployment="m/0", route_reason="requested", streams=[self._stream()])

    async def _stream(self) -> AsyncIterator[Chunk]:
        yield Chunk(text=self.text[:4])
        if self.fail:
            raise InvalidRequest("broken mid-stream")
        yield Chunk(text=self.text[4:], tool_calls=({"id": "c"},) if self.tool_calls else ())
        yield Chunk(finish_reason="stop", usage=Usage(10, 5))


def environment() -> StageEnvironment:
    return StageEnvironment(CONFIG, None, None, clock=lambda: 100.0, wallclock=lambda: 1.0)


def request(content: str = "hello", tenant: str = "t1", messages: list[dict[str, Any]] | None = None, **sampling: Any) -> Request:
    call = ModelCall(kind="chat", model="m", sampling=Sampling(**({"temperature": 0.0} | sampling)),
                     messages=tuple(messages or [{"role": "user", "content": content}]))
    return Request(operation="chat", model="m", request_id="r", call=call, tenant=tenant, served_model="m", plan=["m"])


def run(handler: Any, req: Request) -> tuple[Response, str]:
    async def go() -> tuple[Response, str]:
        response = await handler(req)
        choices = await gather_streams(response.streams)
        return response, "".join(c.text for c in choices[0])

    return asyncio.run(go())


def cache_stage(options: dict[str, Any], upstream: Upstream) -> Any:
    stage = ResponseCacheFactory().build(Reader("test", "stages[0].options", options), environment())
    return stage(upstream)


def test_exact_cache_hits_misses_and_scopes() -> None:
    upstream = Upstream()
    handler = cache_stage({"private_tenants": ["hidden"]}, upstream)

    async def scenario() -> list[str]:
        outcomes = []
        for req in (request(), request(), request(tenant="t2"), request("other"), request(tenant="hidden"), request(tenant="hidden")):
            response = await handler(req)
            await gather_streams(response.streams)
            outcomes.append(req.cache)
        return outcomes

    assert asyncio.run(scenario()) == ["miss", "hit", "miss", "miss", "bypass", "bypass"]
    assert len(upstream.seen) == 5


def test_a_hit_costs_nothing_and_records_the_saving() -> None:
    handler = cache_stage({}, Upstream())
    run(handler, request())
    hit = request()
    response, text = run(handler, hit)
    assert text == "an answer" and response.deployment == "cache"
    assert hit.attempts == [] and hit.saved_usd == pytest.approx((10 + 5) / 1e6)


@pytest.mark.parametrize("upstream", [Upstream(fail=True), Upstream(tool_calls=True)])
def test_failed_streams_and_tool_calls_are_not_stored(upstream: Upstream) -> None:
    handler = cache_stage({}, upstream)
    for _ in range(2):
        try:
            run(handler, request())
        except InvalidRequest:
            pass
    assert len(upstream.seen) == 2


def test_a_stream_the_client_left_is_not_stored() -> None:
    upstream = Upstream()
    handler = cache_stage({}, upstream)

    async def leave_early() -> None:
        response = await handler(request())
        stream = response.streams[0]
        await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(leave_early())
    run(handler, request())
    assert len(upstream.seen) == 2


def test_cache_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"stages\[0\].options.ttl_s"):
        ResponseCacheFactory().build(Reader("test", "stages[0].options", {"ttl_s": -1}), environment())
    with pytest.raises(ConfigError, match="embedding model"):
        ResponseCacheFactory().build(Reader("test", "stages[0].options", {"semantic": {}}), environment())


def test_pii_filter_redacts_what_the_next_stage_sees_and_restores_the_answer() -> None:
    upstream = Upstream(text="Hi [EMAIL_1], noted.")
    stage = PiiFilterFactory().build(Reader("test", "o", {"reversible": True}), environment())
    req = request("I am bob@corp.example")
    _, text = run(stage(upstream), req)
    assert upstream.seen[0].call.messages[0]["content"] == "I am [EMAIL_1]"  # type: ignore[union-attr]
    assert text == "Hi bob@corp.example, noted."


def test_pii_filter_scans_answers_when_asked() -> None:
    stage = PiiFilterFactory().build(Reader("test", "o", {"responses": True}), environment())
    _, text = run(stage(Upstream(text="call 555-867-5309 now, or 10.1.2.3")), request("nothing personal"))
    assert text == "call [PHONE] now, or [IP_ADDRESS]"


def test_context_budget_trims_to_the_smallest_window_of_the_plan() -> None:
    upstream = Upstream()
    stage = ContextBudgetFactory().build(Reader("test", "o", {}), environment())
    old = [{"role": r, "content": "word " * 40} for r in ("user", "assistant") * 4]
    req = request(messages=[{"role": "system", "content": "s"}, *old, {"role": "user", "content": "now?"}], max_tokens=20)
    req.plan = ["m", "small"]
    run(stage(upstream), req)
    assert "trimmed=" in req.response_headers["x-modelyard-context"] and "budget=80; counted=approximate" in req.response_headers["x-modelyard-context"]
    sent = upstream.seen[0].call.messages  # type: ignore[union-attr]
    assert sent[0]["role"] == "system" and sent[-1]["content"] == "now?" and len(sent) < len(old) + 2


def test_context_budget_refuses_what_cannot_fit() -> None:
    stage = ContextBudgetFactory().build(Reader("test", "o", {"max_prompt_tokens": 10}), environment())
    with pytest.raises(ContextWindowExceeded, match="context budget for 'm' is 10 tokens"):
        run(stage(Upstream()), request("word " * 100))


def test_stages_by_config_slot_and_scope() -> None:
    config = parse_config(FLEET | {"stages": [
        {"kind": "pii_filter", "models": ["small"]},
        {"kind": "context_budget", "slot": "after_call", "options": {"max_prompt_tokens": 50}},
    ]})
    built = build_stages(config, StageEnvironment(config, None), default_registry())
    assert len(built.slot("before_route")) == 1 and len(built.slot("after_call")) == 1 and built.slot("after_route") == ()
    upstream = Upstream()
    run(built.slot("before_route")[0](upstream), request("mail a@b.io"))  # model "m": out of the filter's scope
    assert upstream.seen[-1].call.messages[0]["content"] == "mail a@b.io"  # type: ignore[union-attr]


@pytest.mark.parametrize(("stages", "message"), [
    ([{"kind": "nope"}], "unknown stage 'nope'"),
    ([{"kind": "pii_filter", "models": ["ghost"]}], "no model or alias named ghost"),
    ([{"kind": "pii_filter", "options": {"entities": ["DNA"]}}], "unknown entity type DNA"),
    ([{"kind": "pii_filter", "options": {"colour": "red"}}], "unknown field"),
    ([{"kind": "pii_filter", "slot": "sideways"}], "expected one of"),
    ([{"kind": "context_budget", "options": {"summarize_with": "nope"}}], "expected a chat model of the fleet"),
])
def test_bad_stage_config_fails_at_startup(stages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config = parse_config(FLEET | {"stages": stages})
        build_stages(config, StageEnvironment(config, None), default_registry())
