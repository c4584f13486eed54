"""Budget spend and in-flight holds in Redis, shared by every replica that names the same Redis.

Per owner (a tenant, or ``key:<id>``): what was spent per period (day, month,
total; day and month keys expire after their period is long over), and the
holds of requests in flight with their amounts, expiry times and a running
total. Reserving checks every owner's every limited period and, when all have
room, holds the amount on all of them — one Lua script, so two replicas can
never both take the last dollar. A hold expires on its own after the longest
a request may run, so a replica that dies mid-request does not keep its holds.

Redis keeps nothing on disk in some deployments: each check also passes what
this replica knows was spent (from the ledger, plus its own requests), and a
stored figure below that is raised to it. A mark key per owner says Redis
still holds what replicas wrote for it; when a restart has emptied Redis, the
first check of each owner answers :class:`StateLost` instead, and that replica
reloads everyone's spend from the shared ledger (the figure it then passes
along is everyone's, not only its own) before it marks the owner and checks
again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from modelyard.store.redis_client import SharedStateUnavailable, run_script

PREFIX = "modelyard:budget"
PERIODS = ("day", "month", "total")
DAY_KEY_TTL_MS = 3 * 86_400_000
MONTH_KEY_TTL_MS = 70 * 86_400_000
NO_LIMIT = -1.0

# KEYS per owner: holds (hash), hold expiries (zset), reserved (total), spent day, month, total; then each owner's
# "figures kept" mark. ARGV: hold_ttl_ms, member, amount, then per owner: limit and known spend for each period.
# Returns {1}: held; {0, owner index, left}: refused; {2, owner index}: that owner's mark is gone (Redis lost its data).
RESERVE = """
local owners = (#KEYS) / 7
for i = 0, owners - 1 do
  if redis.call('EXISTS', KEYS[6*owners + i + 1]) == 0 then return {2, i, '0'} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, member, amount = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 0, owners - 1 do
  local holds, expiry, reserved = KEYS[6*i+1], KEYS[6*i+2], KEYS[6*i+3]
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    local held = redis.call('HGET', holds, m)
    if held then redis.call('INCRBYFLOAT', reserved, -tonumber(held)); redis.call('HDEL', holds, m) end
  end
  redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
  local inflight = tonumber(redis.call('GET', reserved) or '0')
  for p = 0, 2 do
    local limit, known = tonumber(ARGV[4 + 6*i + 2*p]), tonumber(ARGV[5 + 6*i + 2*p])
    local key = KEYS[6*i + 4 + p]
    local spent = tonumber(redis.call('GET', key) or '0')
    if known > spent then
      redis.call('SET', key, tostring(known), 'KEEPTTL')
      if p == 0 then redis.call('PEXPIRE', key, 259200000) elseif p == 1 then redis.call('PEXPIRE', key, 6048000000) end
      spent = known
    end
    if limit >= 0 and spent + inflight + amount > limit then
      return {0, i, tostring(limit - spent - inflight)}
    end
  end
end
for i = 0, owners - 1 do
  local holds, expiry, reserved = KEYS[6*i+1], KEYS[6*i+2], KEYS[6*i+3]
  redis.call('HSET', holds, member, amount)
  redis.call('ZADD', expiry, now + ttl, member)
  redis.call('INCRBYFLOAT', reserved, amount)
  for _, k in ipairs({holds, expiry, reserved}) do redis.call('PEXPIRE', k, ttl + 60000) end
end
return {1, -1, '0'}
"""

# KEYS: as for RESERVE without the mark. ARGV: member, actual cost, day key TTL, month key TTL.
COMMIT = """
for i = 0, (#KEYS) / 6 - 1 do
  local holds, expiry, reserved = KEYS[6*i+1], KEYS[6*i+2], KEYS[6*i+3]
  local held = redis.call('HGET', holds, ARGV[1])
  if held then
    redis.call('HDEL', holds, ARGV[1])
    redis.call('ZREM', expiry, ARGV[1])
    redis.call('INCRBYFLOAT', reserved, -tonumber(held))
  end
  if tonumber(ARGV[2]) > 0 then
    for p = 0, 2 do redis.call('INCRBYFLOAT', KEYS[6*i + 4 + p], ARGV[2]) end
    redis.call('PEXPIRE', KEYS[6*i + 4], ARGV[3])
    redis.call('PEXPIRE', KEYS[6*i + 5], ARGV[4])
  end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class OwnerCheck:
    """One owner's limits and what this replica knows it spent, per period (day, month, total); None: no limit."""

    owner: str
    limits: tuple[float | None, float | None, float | None]
    known_spend: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class SharedHold:
    """Holds on every owner of one request, released or committed together."""

    member: str
    keys: tuple[str, ...]


class StateLost:
    """Redis no longer holds the shared figures (it restarted empty)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """The owner whose budget would be passed, and what it has left."""

    owner: str
    left: float


class RedisBudgets:
    """Shared budget state (``redis.asyncio`` client; the caller owns it)."""

    def __init__(self, client: Redis, hold_ttl_s: float, prefix: str = PREFIX) -> None:
        self.hold_ttl_ms = int(hold_ttl_s * 1000)
        self.prefix = prefix
        self.client = client
        self._reserve = client.register_script(RESERVE)
        self._commit = client.register_script(COMMIT)

    def _keys(self, owner: str, periods: dict[str, str]) -> list[str]:
        base = f"{self.prefix}:{owner}"
        return [f"{base}:holds", f"{base}:expiry", f"{base}:reserved", *(f"{base}:spent:{p}:{periods[p]}" for p in PERIODS)]

    async def reserve(self, owners: list[OwnerCheck], amount: float, periods: dict[str, str]) -> SharedHold | Refusal | StateLost:
        """Hold ``amount`` on every owner, or refuse naming the first owner without room."""
        member = uuid.uuid4().hex
        keys = [k for o in owners for k in self._keys(o.owner, periods)]
        args: list[float | int | str] = [self.hold_ttl_ms, member, amount]
        for o in owners:
            for limit, known in zip(o.limits, o.known_spend, strict=True):
                args += [NO_LIMIT if limit is None else limit, known]
        marks = [self._mark(o.owner) for o in owners]
        accepted, index, left = await run_script(self._reserve, [*keys, *marks], args)
        if int(accepted) == 2:
            return StateLost()
        if int(accepted):
            return SharedHold(member, tuple(keys))
        return Refusal(owners[int(index)].owner, float(left))

    def _mark(self, owner: str) -> str:
        return f"{self.prefix}:{owner}:kept"

    async def mark_kept(self, owners: list[str]) -> None:
        """Say that these owners' figures are whole again (the next check passes everyone's spend along)."""
        try:
            await self.client.mset({self._mark(owner): "1" for owner in owners})
        except (RedisError, OSError) as exc:
            raise SharedStateUnavailable(str(exc) or type(exc).__name__) from None

    async def commit(self, hold: SharedHold, actual: float) -> None:
        """Release the holds and add the actual cost to every owner's spend (0: a release)."""
        await run_script(self._commit, list(hold.keys), [hold.member, actual, DAY_KEY_TTL_MS, MONTH_KEY_TTL_MS])
