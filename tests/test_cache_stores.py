"""The response cache's stores: the in-process LRU (on a hand-driven clock) and the real Redis; and the HNSW index."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from redis.asyncio import Redis

from modelyard.store.redis_client import connect_redis
from modelyard.store.response_cache import MemoryCacheStore, RedisCacheStore
from modelyard.store.vector_index import VectorIndex

from .services import REDIS_ENV, service_url


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_memory_store_expires_and_evicts_least_recently_used() -> None:
    clock = Clock()
    store = MemoryCacheStore(max_entries=2, clock=clock)
    await store.put("a", b"1", ttl_s=10)
    await store.put("b", b"2", ttl_s=10)
    assert await store.get("a") == b"1"  # a is now the most recently used
    await store.put("c", b"3", ttl_s=10)
    assert await store.get("b") is None and await store.get("a") == b"1"
    clock.now = 10.0
    assert await store.get("a") is None  # expired exactly at its TTL


async def test_redis_store_round_trips_and_expires() -> None:
    client = await connect_redis(service_url(REDIS_ENV))
    prefix = f"modelyard-test:{uuid.uuid4().hex}:cache:"
    try:
        store, other_replica = RedisCacheStore(client, prefix), RedisCacheStore(client, prefix)
        await store.put("k", b"answer", ttl_s=30)
        assert await other_replica.get("k") == b"answer"  # every replica reads every entry
        assert 0 < await client.pttl(prefix + "k") <= 30_000
        await store.put("short", b"x", ttl_s=0.05)
        assert await client.pttl(prefix + "short") <= 50
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_redis_store_failure_is_a_miss_not_an_error() -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    dead = RedisCacheStore(unreachable)
    assert await dead.get("k") is None
    await dead.put("k", b"v", 1.0)  # logged and skipped
    await unreachable.aclose()


def unit(vector: list[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_vector_index_scopes_expiry_and_bound() -> None:
    index = VectorIndex(3, max_entries=3)
    index.add("s1", unit([1, 0, 0]), "k1", "one", expires=100)
    index.add("s1", unit([0, 1, 0]), "k2", "two", expires=5)
    index.add("s2", unit([1, 0, 0]), "k3", "other scope", expires=100)
    found = index.nearest("s1", unit([1, 0.1, 0]), now=0)
    assert [n.key for n in found] == ["k1", "k2"] and found[0].similarity == pytest.approx(0.995, abs=0.01)
    assert [n.key for n in index.nearest("s1", unit([0, 1, 0]), now=10)] == ["k1"]  # k2 expired and is dropped
    index.add("s1", unit([0, 0, 1]), "k4", "four", expires=100)
    index.add("s1", unit([0, 1, 1]), "k5", "five", expires=100)  # over the bound: the oldest (k1) goes
    assert len(index) == 3 and "k1" not in [n.key for n in index.nearest("s1", unit([1, 0, 0]), now=0)]
