"""The Redis that replicas share: connecting, running scripts, and the one error above this boundary."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError


class SharedStateUnavailable(Exception):
    """Redis could not be reached or refused the script (the message says which)."""


async def run_script(script: AsyncScript, keys: list[str], args: list[float | int | str]) -> Any:
    """Run a registered Lua script, with Redis's errors translated to :class:`SharedStateUnavailable`."""
    try:
        return await script(keys=keys, args=args)
    except (RedisError, OSError) as exc:
        raise SharedStateUnavailable(str(exc) or type(exc).__name__) from None


async def connect_redis(url: str) -> Redis:
    """A client for the Redis that replicas share, checked with a PING (so a wrong URL fails at startup)."""
    client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise SharedStateUnavailable(f"Redis at {url} cannot be reached ({exc})") from None
    return client
