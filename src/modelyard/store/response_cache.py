"""Where cached answers live: this process's memory (bounded, LRU) or the Redis that replicas share.

Values are opaque bytes with a time to live. A Redis failure is a miss (or a
skipped fill), never an error for the request: the cache only ever saves work.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("modelyard.cache")


class CacheStore(Protocol):
    """Bytes by key, each with a time to live."""

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...
    def describe(self) -> dict[str, object]: ...


class MemoryCacheStore:
    """A bounded LRU in this process; ``clock`` is what expiry is measured on."""

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        found = self.entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self.clock():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.entries[key] = (self.clock() + ttl_s, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def describe(self) -> dict[str, object]:
        return {"kind": "memory", "entries": len(self.entries), "max_entries": self.max_entries}


class RedisCacheStore:
    """Entries under ``prefix`` in Redis, expired by Redis itself (every replica sees every entry)."""

    def __init__(self, client: Redis, prefix: str = "modelyard:cache:") -> None:
        self.client = client
        self.prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.client.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            log.warning("response cache: Redis read failed (%s); answering as a miss", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self.client.set(self.prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            log.warning("response cache: Redis write failed (%s); the answer is not cached", exc)

    def describe(self) -> dict[str, object]:
        return {"kind": "redis", "prefix": self.prefix}
