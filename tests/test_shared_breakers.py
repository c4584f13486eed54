"""Breakers shared through the real Redis: one replica's opening opens the others' within a second.

Each "replica" is a SharedBreakers over its own breaker for the same deployment
and its own Redis client; the breakers run on hand-driven clocks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from modelyard.config.schema import BreakerPolicy
from modelyard.pipeline.shared_breakers import SharedBreakers
from modelyard.reliability.breaker import BreakerState, CircuitBreaker
from modelyard.store.redis_breakers import RedisBreakers
from modelyard.store.redis_client import connect_redis

from .services import REDIS_ENV, service_url

REDIS_URL = service_url(REDIS_ENV)
POLICY = BreakerPolicy(consecutive_failures=3, cooldown_s=20.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clients() -> AsyncIterator[tuple[list[Redis], str]]:
    prefix = f"modelyard-test:{uuid.uuid4().hex}:breaker"
    made = [await connect_redis(REDIS_URL) for _ in range(3)]
    yield made, prefix
    keys = [k async for k in made[0].scan_iter(f"{prefix}:*")]
    if keys:
        await made[0].delete(*keys)
    for client in made:
        await client.aclose()


async def until(condition: object, what: str, timeout: float = 1.0) -> float:
    """Seconds until ``condition()`` held (the goal: within a second)."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, f"{what} not within {timeout}s"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_an_opening_on_one_replica_opens_every_replica_for_the_rest_of_its_cooldown(clients: tuple[list[Redis], str]) -> None:
    (ra, rb, rc), prefix = clients
    clock_a, clock_b, clock_c = Clock(), Clock(), Clock()
    a_breaker, b_breaker = CircuitBreaker(POLICY, clock_a), CircuitBreaker(POLICY, clock_b)
    a = SharedBreakers(RedisBreakers(ra, prefix), {"m/0": a_breaker, "m/1": CircuitBreaker(POLICY, clock_a)}, "a")
    b = SharedBreakers(RedisBreakers(rb, prefix), {"m/0": b_breaker}, "b")
    for replica in (a, b):
        replica.start()
        await asyncio.wait_for(replica.listening.wait(), 5)
    try:
        for _ in range(POLICY.consecutive_failures):
            a_breaker.record_failure()
        assert a_breaker.current() == BreakerState.OPEN
        await until(lambda: b_breaker.current() == BreakerState.OPEN, "b's breaker open")
        assert not b_breaker.allow()
        assert "opened on replica a: 3 consecutive failures" in b_breaker.transitions[-1].reason
        assert a.breakers["m/1"].current() == BreakerState.CLOSED, "only the deployment that failed"
        clock_b.now += POLICY.cooldown_s
        assert b_breaker.current() == BreakerState.HALF_OPEN, "the cool-down ends on every replica, and each probes for itself"

        # a replica that starts later reads the openings still in force
        c_breaker = CircuitBreaker(POLICY, clock_c)
        c = SharedBreakers(RedisBreakers(rc, prefix), {"m/0": c_breaker}, "c")
        c.start()
        await until(lambda: c_breaker.state == BreakerState.OPEN, "a late replica's breaker open", 5)
        assert c_breaker.policy.cooldown_s - (clock_c.now - c_breaker.opened_at) <= POLICY.cooldown_s
        await c.aclose()
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_peer_opening_is_not_announced_again(clients: tuple[list[Redis], str]) -> None:
    (ra, rb, _), prefix = clients
    a_breaker, b_breaker = CircuitBreaker(POLICY, Clock()), CircuitBreaker(POLICY, Clock())
    a = SharedBreakers(RedisBreakers(ra, prefix), {"m/0": a_breaker}, "a")
    b = SharedBreakers(RedisBreakers(rb, prefix), {"m/0": b_breaker}, "b")
    heard: list[str] = []
    listener = RedisBreakers(ra, prefix).listen()

    async def record() -> None:
        async for news in listener:
            heard.append(news.replica)

    recorder = asyncio.create_task(record())
    for replica in (a, b):
        replica.start()
        await asyncio.wait_for(replica.listening.wait(), 5)
    try:
        channel = RedisBreakers(ra, prefix).channel
        while (await ra.pubsub_numsub(channel))[0][1] < 3:  # a, b and the recorder are subscribed
            await asyncio.sleep(0.005)
        for _ in range(POLICY.consecutive_failures):
            a_breaker.record_failure()
        await until(lambda: b_breaker.state == BreakerState.OPEN, "b's breaker open")
        await a.writes.drain()
        await until(lambda: heard == ["a"], "the opening heard once")
        await asyncio.sleep(0.1)
        assert heard == ["a"], "b did not echo a's opening"
    finally:
        recorder.cancel()
        await a.aclose()
        await b.aclose()


def test_a_peer_opening_lasts_what_was_left_of_its_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(POLICY, clock)
    breaker.open_from_peer("opened on replica a", cooldown_left_s=5.0)
    clock.now += 2.0
    breaker.open_from_peer("a shorter one changes nothing", cooldown_left_s=1.0)
    clock.now += 2.9
    assert breaker.current() == BreakerState.OPEN
    clock.now += 0.2
    assert breaker.current() == BreakerState.HALF_OPEN
