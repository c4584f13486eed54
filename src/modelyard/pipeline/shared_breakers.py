"""Every replica's breaker for a deployment opens when one replica's does (``--redis-url``).

A replica that sees an upstream fail opens its own breaker as before; the
opening is announced through Redis, and every other replica opens its breaker
for the same deployment for the rest of the cool-down. Half-open probes and
closing stay local: after the cool-down each replica probes for itself, and a
failed probe anywhere opens all of them again. Without Redis (or while it is
unreachable) each replica keeps its own breakers, as a single replica does.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping

from modelyard.pipeline.shared_writes import SharedWrites
from modelyard.reliability.breaker import BreakerState, CircuitBreaker, Transition, TransitionListener
from modelyard.store.redis_breakers import BreakerNews, RedisBreakers
from modelyard.store.redis_client import SharedStateUnavailable
from modelyard.tasks import stop_task

log = logging.getLogger("modelyard.breakers")
RECONNECT_S = 1.0


class SharedBreakers:
    def __init__(self, shared: RedisBreakers, breakers: Mapping[str, CircuitBreaker], replica: str | None = None) -> None:
        self.shared = shared
        self.breakers = breakers
        self.replica = replica or uuid.uuid4().hex[:12]
        self.writes = SharedWrites(log, "breaker openings stay on this replica")
        self.listening = asyncio.Event()  # set once subscribed (tests wait on it)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for name, breaker in self.breakers.items():
            breaker.listener = self._announcer(name, breaker)
        self.task = asyncio.create_task(self._follow(), name="shared-breakers")

    def _announcer(self, name: str, breaker: CircuitBreaker) -> TransitionListener:
        def opened(transition: Transition) -> None:
            if transition.state == BreakerState.OPEN:
                news = BreakerNews(name, self.replica, transition.reason, breaker.policy.cooldown_s)
                self.writes.start(self.shared.announce(news))

        return opened

    async def _follow(self) -> None:
        while True:
            try:
                for news in await self.shared.in_force():
                    self._apply(news)
                listener = self.shared.listen()
                self.listening.set()
                async for news in listener:
                    self._apply(news)
            except SharedStateUnavailable as exc:
                self.listening.clear()
                self.writes.unavailable(exc)
                await asyncio.sleep(RECONNECT_S)

    def _apply(self, news: BreakerNews) -> None:
        breaker = self.breakers.get(news.deployment)
        if breaker is not None and news.replica != self.replica:
            breaker.open_from_peer(f"opened on replica {news.replica}: {news.reason}", news.cooldown_left_s)

    async def aclose(self) -> None:
        await stop_task(self.task)
        await self.writes.drain()

