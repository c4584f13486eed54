"""Session budgets: the pure rule with a hand-driven clock, then the same rule in this process and in Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from modelyard.config import parse_config
from modelyard.config.reader import ConfigError, Reader
from modelyard.economics.session_budget import Cost, Refused, SessionLimits, SessionTally, commit, reserve
from modelyard.errors import SessionBudgetExceeded
from modelyard.pipeline.answer_watch import watch_answers
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.session_budget import LocalTallies, SessionBudget, SessionBudgetOptions, SharedTallies, parse_options, worst_tokens
from modelyard.pipeline.types import Attempt, Request, Response
from modelyard.protocol import Chunk, ModelCall, Sampling, Usage
from modelyard.store.redis_client import connect_redis
from modelyard.store.redis_sessions import RedisSessions, SessionRefusal

from .services import REDIS_ENV, service_url

REDIS_URL = service_url(REDIS_ENV)


# --- the rule (no I/O, clock passed in) ---------------------------------------------------------------

def test_calls_are_counted_with_those_in_flight() -> None:
    tally, limits = SessionTally(started=0.0), SessionLimits(calls=2)
    assert reserve(tally, limits, Cost(), 1.0) is None
    assert reserve(tally, limits, Cost(), 1.0) is None  # two in flight
    refused = reserve(tally, limits, Cost(), 1.0)
    assert refused is not None and refused.reason == "calls" and refused.detail == "2 of 2 model calls used or in flight"


def test_worst_case_is_held_and_actual_is_committed() -> None:
    tally, limits = SessionTally(started=0.0), SessionLimits(usd=1.0, tokens=1000)
    assert reserve(tally, limits, Cost(0.6, 600), 1.0) is None
    assert tally.held_usd == 0.6 and tally.held_tokens == 600
    commit(tally, Cost(0.6, 600), Cost(0.1, 100), 2.0)
    assert (tally.usd, tally.tokens, tally.calls, tally.held_usd, tally.held_tokens, tally.held_calls) == (0.1, 100, 1, 0.0, 0, 0)
    assert reserve(tally, limits, Cost(0.6, 600), 3.0) is None  # 0.1 spent + 0.6 held <= 1.0
    refused = reserve(tally, limits, Cost(0.6, 600), 3.0)
    assert refused is not None and refused.reason == "usd"


def test_a_refusal_stops_the_session_for_good() -> None:
    tally, limits = SessionTally(started=0.0), SessionLimits(tokens=1000)
    first = reserve(tally, limits, Cost(0.0, 5000), 1.0)
    assert first is not None and first.reason == "tokens"
    again = reserve(tally, limits, Cost(0.0, 1), 2.0)  # a call that would fit is still refused: the session is stopped
    assert again == first


def test_time_runs_from_the_first_call() -> None:
    tally, limits = SessionTally(started=100.0), SessionLimits(seconds=60)
    assert reserve(tally, limits, Cost(), 160.0) is None
    commit(tally, Cost(), Cost(), 160.0)
    refused = reserve(tally, limits, Cost(), 160.5)
    assert refused is not None and refused.reason == "seconds" and "started 60.5s ago" in refused.detail


def test_options_need_a_limit_and_check_types() -> None:
    assert parse_options(Reader("t", "o", {"calls": 3, "usd": 0.5})).limits == SessionLimits(usd=0.5, calls=3)
    with pytest.raises(ConfigError, match="at least one of usd, tokens, calls, seconds"):
        parse_options(Reader("t", "o", {}))
    with pytest.raises(ConfigError, match=r"o\.calls: expected an integer >= 1"):
        parse_options(Reader("t", "o", {"calls": 0}))


# --- the same rule in this process and in Redis ---------------------------------------------------------

@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[Redis, str]]:
    prefix = f"modelyard-test:{uuid.uuid4().hex}"
    client = await connect_redis(REDIS_URL)
    yield client, prefix
    keys = [k async for k in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["local", "redis"])
def tallies(request: pytest.FixtureRequest, redis_client: tuple[Redis, str]) -> LocalTallies | SharedTallies:
    local = LocalTallies(3600.0)
    if request.param == "local":
        return local
    client, prefix = redis_client
    return SharedTallies(RedisSessions(client, 60.0, 3600.0, prefix), local)


async def settled(store: LocalTallies | SharedTallies) -> None:
    if isinstance(store, SharedTallies):
        await store.writes.drain()


async def test_the_rule_holds_in_both_stores(tallies: LocalTallies | SharedTallies) -> None:
    limits = SessionLimits(usd=1.0, calls=3)
    first = await tallies.reserve("s1", limits, Cost(0.4, 10))
    assert not isinstance(first, Refused)
    first.commit(Cost(0.1, 10))
    await settled(tallies)
    over = await tallies.reserve("s1", limits, Cost(0.95, 10))  # 0.1 spent + 0.95 > 1.0
    assert isinstance(over, Refused) and over.reason == "usd" and over.limit == 1.0 and over.used == pytest.approx(0.1)
    stopped = await tallies.reserve("s1", limits, Cost(0.0, 1))
    assert isinstance(stopped, Refused) and stopped.reason == "usd"
    other = await tallies.reserve("s2", limits, Cost(0.95, 10))
    assert not isinstance(other, Refused)  # another session has its own budget
    for _ in range(2):
        assert not isinstance(await tallies.reserve("s3", limits, Cost()), Refused)
    calls = await tallies.reserve("s3", SessionLimits(calls=2), Cost())
    assert isinstance(calls, Refused) and calls.reason == "calls"


async def test_replicas_share_a_session_exactly(redis_client: tuple[Redis, str]) -> None:
    client, prefix = redis_client
    other = await connect_redis(REDIS_URL)
    try:
        a, b = RedisSessions(client, 60.0, 3600.0, prefix), RedisSessions(other, 60.0, 3600.0, prefix)
        outcomes = await asyncio.gather(*[(a if i % 2 else b).reserve("agent-1", (None, None, 5, None), 0.0, 0) for i in range(20)])
        assert sum(not isinstance(o, SessionRefusal) for o in outcomes) == 5
    finally:
        await other.aclose()


async def test_a_dead_replicas_hold_expires(redis_client: tuple[Redis, str]) -> None:
    client, prefix = redis_client
    shared = RedisSessions(client, 0.2, 3600.0, prefix)
    limits = (None, None, 1, None)
    assert not isinstance(await shared.reserve("s", limits, 0.0, 10), SessionRefusal)  # never committed: its replica died
    state = f"{prefix}:s"
    assert int(await client.hget(state, "held_calls")) == 1
    await asyncio.sleep(0.3)
    # The next check releases the expired hold first; the call it held never counted, so this one fits.
    assert not isinstance(await shared.reserve("s", limits, 0.0, 10), SessionRefusal)


# --- the stage ------------------------------------------------------------------------------------------

CONFIG = parse_config({"models": {"m": {"kind": "chat", "context_window": 1000, "deployments": [
    {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "price": {"input_per_1m": 1000, "output_per_1m": 1000}}]}}})


def session_request(session: str | None, max_tokens: int | None = 100) -> Request:
    call = ModelCall(kind="chat", model="m", messages=({"role": "user", "content": "x" * 50},), sampling=Sampling(max_tokens=max_tokens))
    request = Request("chat", "m", "r", call=call, session=session)
    request.plan = ["m"]
    return request


def test_worst_tokens_is_the_prompt_plus_max_tokens_within_the_window() -> None:
    catalog = PriceCatalog(CONFIG)
    assert worst_tokens(session_request("s", 100), catalog) == 150
    assert worst_tokens(session_request("s", None), catalog) == 1000  # no max_tokens: the window


async def test_the_stage_refuses_and_commits_what_attempts_used() -> None:
    clock = [1000.0]
    tallies = LocalTallies(3600.0, lambda: clock[0])
    stage = SessionBudget(SessionBudgetOptions(SessionLimits(tokens=350, seconds=30)), tallies, PriceCatalog(CONFIG), lambda: 5.0, lambda: clock[0])

    async def upstream(request: Request) -> Response:
        attempt = Attempt("m", "m/0", 0.0, outcome="ok", usage=Usage(60, 40))
        request.attempts.append(attempt)
        return Response("m", "m/0", "")

    handler = stage.stage(upstream)
    first = session_request("agent")
    await handler(first)
    assert first.deadline == 5.0 + 30  # cut to the session's end
    first.finish()
    assert tallies.tallies["default:default:agent"].tokens == 100
    await handler(session_request("agent"))  # 100 used + 150 held <= 350 (this one is never finished: still held)
    with pytest.raises(SessionBudgetExceeded, match="tokens budget is spent") as info:
        await handler(session_request("agent"))  # 100 + 150 + 150 > 350
    assert info.value.code == "session_budget_exceeded" and info.value.status == 400
    await handler(session_request(None))  # no session: not counted


async def test_tool_calls_of_the_answer_are_kept() -> None:
    deltas = [
        Chunk(tool_calls=({"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": ""}},)),
        Chunk(tool_calls=({"index": 0, "function": {"arguments": '{"city": "Paris"}'}},)),
        Chunk(finish_reason="tool_calls", usage=Usage(5, 5)),
    ]

    async def stream() -> AsyncIterator[Chunk]:
        for chunk in deltas:
            yield chunk

    async def upstream(request: Request) -> Response:
        return Response("m", "m/0", "", streams=[stream()])

    request = session_request("agent")
    response = await watch_answers()(upstream)(request)
    assert [c async for c in response.streams[0]] == deltas  # passed through unchanged
    assert request.tool_calls_made == [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    plain = session_request(None)
    await watch_answers()(upstream)(plain)
    assert plain.tool_calls_made == []
