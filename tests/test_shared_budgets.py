"""Budgets in Redis, shared between replicas: the real Redis (this machine's or a private one, tests/services.py), two books as two replicas."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from modelyard.economics.budget import BudgetBook, BudgetLimits, period_keys
from modelyard.errors import BudgetExceeded
from modelyard.pipeline.budget import SharedBudgets
from modelyard.store.redis_budgets import RedisBudgets, SharedHold
from modelyard.store.redis_client import connect_redis

from .conftest import free_port
from .services import REDIS_ENV, service_url

REDIS_URL = service_url(REDIS_ENV)  # this machine's, or a private one (tests/services.py)
COST = 0.009


def book(**limits: BudgetLimits) -> BudgetBook:
    return BudgetBook(limits=dict(limits))


@pytest.fixture
async def redis_pair() -> AsyncIterator[tuple[Redis, Redis, str]]:
    prefix = f"modelyard-test:{uuid.uuid4().hex}"
    clients = (await connect_redis(REDIS_URL), await connect_redis(REDIS_URL))
    yield clients[0], clients[1], prefix
    keys = [k async for k in clients[0].scan_iter(f"{prefix}:*")]
    if keys:
        await clients[0].delete(*keys)
    for client in clients:
        await client.aclose()


def replicas(pair: tuple[Redis, Redis, str], hold_ttl_s: float = 60.0, **limits: BudgetLimits) -> tuple[SharedBudgets, SharedBudgets]:
    a, b, prefix = pair
    return (SharedBudgets(RedisBudgets(a, hold_ttl_s, prefix), book(**limits)),
            SharedBudgets(RedisBudgets(b, hold_ttl_s, prefix), book(**limits)))


async def attempt(budgets: SharedBudgets, owners: list[str], amount: float) -> bool:
    try:
        commit = await budgets.reserve(owners, amount)
    except BudgetExceeded:
        return False
    commit(amount)
    return True


async def settled(*budgets: SharedBudgets) -> None:
    while any(b.writes.pending for b in budgets):
        await asyncio.sleep(0.01)


async def test_two_replicas_never_overspend_together(redis_pair: tuple[Redis, Redis, str]) -> None:
    a, b = replicas(redis_pair, acme=BudgetLimits(total=0.05))
    results = await asyncio.gather(*(attempt(a if i % 2 else b, ["acme"], COST) for i in range(100)))
    assert sum(results) == 5  # 5 x 0.009 = 0.045; a sixth would pass 0.05
    await settled(a, b)
    with pytest.raises(BudgetExceeded, match=r"tenant 'acme' has \$0\.005000 of budget left"):
        await a.reserve(["acme"], COST)


async def test_a_hold_is_all_owners_or_none_and_a_release_frees_it(redis_pair: tuple[Redis, Redis, str]) -> None:
    a, b = replicas(redis_pair, acme=BudgetLimits(total=1.0), **{"key:k1": BudgetLimits(day=0.01)})
    commit = await a.reserve(["acme", "key:k1"], COST)
    with pytest.raises(BudgetExceeded, match="API key k1"):
        await b.reserve(["acme", "key:k1"], COST)  # the key's day budget is held; the tenant's is not touched
    commit(0.0)  # the request failed before any spend
    await settled(a)
    (await b.reserve(["acme", "key:k1"], COST))(COST)
    await settled(b)
    spent = await redis_pair[0].get(f"{redis_pair[2]}:acme:spent:total:all")
    assert spent is not None and float(spent) == pytest.approx(COST)


async def test_a_dead_replicas_holds_expire(redis_pair: tuple[Redis, Redis, str]) -> None:
    a, b = replicas(redis_pair, hold_ttl_s=0.5, acme=BudgetLimits(day=COST))
    held_at = time.monotonic()
    await a.reserve(["acme"], COST)  # never committed: the replica "died"
    with pytest.raises(BudgetExceeded):
        await b.reserve(["acme"], COST)
    await retry_until_reserved(b, ["acme"], COST, deadline_s=10)
    assert time.monotonic() - held_at >= 0.45  # Redis expired the hold at its TTL, not before (50 ms for clock granularity)


async def retry_until_reserved(budgets: SharedBudgets, owners: list[str], amount: float, deadline_s: float) -> None:
    """Return once a reservation succeeds (the event), polling; fail past the deadline."""
    started = time.monotonic()
    while True:
        try:
            await budgets.reserve(owners, amount)
            return
        except BudgetExceeded:
            assert time.monotonic() - started < deadline_s, "the hold never expired"
            await asyncio.sleep(0.02)


async def test_what_a_replica_knows_was_spent_survives_a_redis_that_lost_it(redis_pair: tuple[Redis, Redis, str]) -> None:
    a, _ = replicas(redis_pair, acme=BudgetLimits(month=0.05))
    a.book.spent[("acme", "month", period_keys(0)["month"])] = 1.0  # an old month does not count
    a.book.spent[("acme", "month", period_keys(time.time())["month"])] = 0.045  # from the ledger at startup
    with pytest.raises(BudgetExceeded):
        await a.reserve(["acme"], COST)


class HeldCommits(RedisBudgets):
    """Redis budgets whose commits wait for ``release``: a commit still on its way when the next check is sent."""

    def __init__(self, client: Redis, hold_ttl_s: float, prefix: str) -> None:
        super().__init__(client, hold_ttl_s, prefix)
        self.release = asyncio.Event()

    async def commit(self, hold: SharedHold, actual: float) -> None:
        await self.release.wait()
        await super().commit(hold, actual)


async def test_a_commit_on_its_way_is_not_counted_twice(redis_pair: tuple[Redis, Redis, str]) -> None:
    client, _, prefix = redis_pair
    shared = HeldCommits(client, 60.0, prefix)
    a = SharedBudgets(shared, book(acme=BudgetLimits(total=0.05)))
    (await a.reserve(["acme"], COST))(COST)  # in this replica's book at once; in Redis once released
    (await a.reserve(["acme"], COST))(0.0)  # a check sent meanwhile (then released unspent)
    shared.release.set()
    await settled(a)
    total = period_keys(time.time())["total"]
    assert float(await client.get(f"{prefix}:acme:spent:total:{total}") or 0) == pytest.approx(COST)  # not 2 x COST
    fresh = SharedBudgets(RedisBudgets(client, 60.0, prefix), book(acme=BudgetLimits(total=0.05)))
    with pytest.raises(BudgetExceeded, match=r"tenant 'acme' has \$0\.041000 of budget left"):
        await fresh.reserve(["acme"], 0.045)


async def test_without_redis_each_replica_enforces_alone(caplog: pytest.LogCaptureFixture) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    budgets = SharedBudgets(RedisBudgets(client, 60.0), book(acme=BudgetLimits(total=0.01)))
    with caplog.at_level(logging.WARNING, "modelyard.budget"):
        (await budgets.reserve(["acme"], COST))(COST)
        with pytest.raises(BudgetExceeded):
            await budgets.reserve(["acme"], COST)
    assert "budgets are enforced per replica" in caplog.text
    await settled(budgets)
    await client.aclose()


async def test_after_redis_restarts_empty_every_replica_reloads_everyones_spend(redis_pair: tuple[Redis, Redis, str]) -> None:
    """The shared ledger holds what both replicas spent; the emptied Redis is refilled from it, not from each replica's own view."""
    a, b = replicas(redis_pair, acme=BudgetLimits(total=0.05))
    ledger: list[float] = []

    def reloader(budgets: SharedBudgets) -> Callable[[], Awaitable[None]]:
        async def reload() -> None:  # what Keyring.load_spend does with the ledger's sum
            slot = ("acme", "total", period_keys(time.time())["total"])
            budgets.book.spent[slot] = max(budgets.book.spent.get(slot, 0.0), sum(ledger))

        return reload

    a.reload, b.reload = reloader(a), reloader(b)

    async def spend(budgets: SharedBudgets) -> bool:
        if await attempt(budgets, ["acme"], COST):
            ledger.append(COST)
            return True
        return False

    for budgets in (a, b, a, b):
        assert await spend(budgets)
    await settled(a, b)
    before = (a.restorations, b.restorations)  # a fresh Redis has no mark either: a restored it at its first check
    client, _, prefix = redis_pair
    await client.delete(*[k async for k in client.scan_iter(f"{prefix}:*")])  # Redis restarted with nothing
    results = [await spend(budgets) for budgets in (a, b) * 5]
    assert sum(results) == 1, "0.036 spent before the restart leaves room for one more 0.009, not three per replica"
    assert (a.restorations - before[0], b.restorations - before[1]) == (1, 0), "the first replica to notice reloads; its figure is everyone's"
    await settled(a, b)
    await client.delete(*[k async for k in client.scan_iter(f"{prefix}:*")])
    reloads = a.restorations
    await asyncio.gather(*(a.reserve(["acme"], 0.0) for _ in range(20)))  # twenty requests notice the loss together
    assert a.restorations == reloads + 1, "one reload for all of them"
