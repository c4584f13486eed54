"""Breaker openings shared between replicas through Redis.

An opening is published on a channel (replicas listening hear it at once) and
kept as a key that expires with the cool-down (a replica that starts later, or
reconnects, reads the openings still in force).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from modelyard.store.redis_client import SharedStateUnavailable

PREFIX = "modelyard:breaker"


@dataclass(frozen=True, slots=True)
class BreakerNews:
    """A replica opened its breaker for ``deployment``; it stays open ``cooldown_left_s`` more."""

    deployment: str
    replica: str
    reason: str
    cooldown_left_s: float


class RedisBreakers:
    def __init__(self, client: Redis, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}:news"

    async def announce(self, news: BreakerNews) -> None:
        payload = json.dumps(asdict(news))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.prefix}:open:{news.deployment}", payload, px=max(1, int(news.cooldown_left_s * 1000)))
                pipe.publish(self.channel, payload)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise SharedStateUnavailable(str(exc) or type(exc).__name__) from None

    async def in_force(self) -> list[BreakerNews]:
        """Openings whose cool-down has not ended, with the time they have left."""
        found = []
        try:
            async for key in self.client.scan_iter(f"{self.prefix}:open:*"):
                payload, left_ms = await self.client.get(key), await self.client.pttl(key)
                if payload is not None and left_ms > 0:
                    found.append(BreakerNews(**(json.loads(payload) | {"cooldown_left_s": left_ms / 1000})))
        except (RedisError, OSError) as exc:
            raise SharedStateUnavailable(str(exc) or type(exc).__name__) from None
        return found

    async def listen(self) -> AsyncIterator[BreakerNews]:
        """Openings announced from now on, as they arrive."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message.get("type") == "message":
                    yield BreakerNews(**json.loads(message["data"]))
        except (RedisError, OSError) as exc:
            raise SharedStateUnavailable(str(exc) or type(exc).__name__) from None
        finally:
            await pubsub.aclose()
