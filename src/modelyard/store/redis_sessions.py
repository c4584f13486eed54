"""Session budgets in Redis, shared by every replica that names the same Redis.

Per session (and budget name and tenant): a hash with the committed spend,
what calls in flight hold, the first call's time and the refusal that stopped
it; the holds themselves with their expiry times, so a replica that dies
mid-call does not keep its hold. Reserving applies the rule of
:mod:`modelyard.economics.session_budget` in one Lua script, so two replicas
can never both take a session's last call. Every key expires after the
session has been idle for ``idle_ttl_s``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from modelyard.store.redis_client import run_script

PREFIX = "modelyard:session"
NO_LIMIT = -1.0

# KEYS: state (hash), holds (hash), expiry (zset). ARGV: hold TTL ms, idle TTL ms, member, usd, tokens,
# then the limits (usd, tokens, calls, seconds; -1: none). Returns {1, started ms} or {0, reason, used, limit, ask}.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state, holds, expiry = KEYS[1], KEYS[2], KEYS[3]
local hold_ttl, idle, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local usd, tokens = tonumber(ARGV[4]), tonumber(ARGV[5])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
  local held = redis.call('HGET', holds, m)
  if held then
    local sep = string.find(held, ' ')
    redis.call('HINCRBYFLOAT', state, 'held_usd', -tonumber(string.sub(held, 1, sep - 1)))
    redis.call('HINCRBY', state, 'held_tokens', -tonumber(string.sub(held, sep + 1)))
    redis.call('HINCRBY', state, 'held_calls', -1)
    redis.call('HDEL', holds, m)
  end
end
redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
local stopped = redis.call('HMGET', state, 'stopped', 'stop_used', 'stop_limit', 'stop_ask')
if stopped[1] then return {0, stopped[1], stopped[2], stopped[3], stopped[4]} end
local started = tonumber(redis.call('HGET', state, 'started') or '-1')
if started < 0 then
  started = now
  redis.call('HSET', state, 'started', now)
end
local f = redis.call('HMGET', state, 'usd', 'tokens', 'calls', 'held_usd', 'held_tokens', 'held_calls')
local su, st, sc = tonumber(f[1] or '0'), tonumber(f[2] or '0'), tonumber(f[3] or '0')
local hu, ht, hc = tonumber(f[4] or '0'), tonumber(f[5] or '0'), tonumber(f[6] or '0')
local lu, lt, lc, ls = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local reason, used, limit, ask = nil, 0, 0, 0
if ls >= 0 and (now - started) / 1000 > ls then reason, used, limit, ask = 'seconds', (now - started) / 1000, ls, 0
elseif lc >= 0 and sc + hc + 1 > lc then reason, used, limit, ask = 'calls', sc + hc, lc, 1
elseif lu >= 0 and su + hu + usd > lu then reason, used, limit, ask = 'usd', su + hu, lu, usd
elseif lt >= 0 and st + ht + tokens > lt then reason, used, limit, ask = 'tokens', st + ht, lt, tokens
end
if reason then
  redis.call('HSET', state, 'stopped', reason, 'stop_used', tostring(used), 'stop_limit', tostring(limit), 'stop_ask', tostring(ask))
  redis.call('PEXPIRE', state, idle)
  return {0, reason, tostring(used), tostring(limit), tostring(ask)}
end
redis.call('HINCRBYFLOAT', state, 'held_usd', usd)
redis.call('HINCRBY', state, 'held_tokens', tokens)
redis.call('HINCRBY', state, 'held_calls', 1)
redis.call('HSET', holds, member, tostring(usd) .. ' ' .. tostring(tokens))
redis.call('ZADD', expiry, now + hold_ttl, member)
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, idle) end
return {1, tostring(started)}
"""

# KEYS: as for RESERVE. ARGV: member, used usd, used tokens, idle TTL ms.
COMMIT = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local sep = string.find(held, ' ')
  redis.call('HINCRBYFLOAT', KEYS[1], 'held_usd', -tonumber(string.sub(held, 1, sep - 1)))
  redis.call('HINCRBY', KEYS[1], 'held_tokens', -tonumber(string.sub(held, sep + 1)))
  redis.call('HINCRBY', KEYS[1], 'held_calls', -1)
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('HINCRBYFLOAT', KEYS[1], 'usd', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'calls', 1)
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ARGV[4]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class SessionRefusal:
    """The limit that stopped the session (usd, tokens, calls, seconds), what was used of it, and what the call asked."""

    reason: str
    used: float
    limit: float
    ask: float


@dataclass(frozen=True, slots=True)
class SessionHold:
    member: str
    keys: tuple[str, ...]
    started: float  # the session's first call, epoch seconds (Redis's clock)


def _limit(value: float | None) -> float:
    return NO_LIMIT if value is None else float(value)


class RedisSessions:
    """Shared session tallies (``redis.asyncio`` client; the caller owns it)."""

    def __init__(self, client: Redis, hold_ttl_s: float, idle_ttl_s: float, prefix: str = PREFIX) -> None:
        self.hold_ttl_ms = int(hold_ttl_s * 1000)
        self.idle_ttl_ms = int(idle_ttl_s * 1000)
        self.prefix = prefix
        self._reserve = client.register_script(RESERVE)
        self._commit = client.register_script(COMMIT)

    def _keys(self, scope: str) -> list[str]:
        base = f"{self.prefix}:{scope}"
        return [base, f"{base}:holds", f"{base}:expiry"]

    async def reserve(
        self, scope: str, limits: tuple[float | None, float | None, float | None, float | None], usd: float, tokens: int,
    ) -> SessionHold | SessionRefusal:
        """Hold ``usd`` and ``tokens`` on the session named by ``scope``, or the refusal that stopped it.

        ``limits``: usd, tokens, calls and seconds (None: no limit).
        """
        member = uuid.uuid4().hex
        keys = self._keys(scope)
        args: list[float | int | str] = [self.hold_ttl_ms, self.idle_ttl_ms, member, usd, tokens, *(_limit(v) for v in limits)]
        result = await run_script(self._reserve, keys, args)
        if int(result[0]) == 1:
            return SessionHold(member, tuple(keys), float(result[1]) / 1000)
        reason, used, limit, asked = (v.decode() if isinstance(v, bytes) else str(v) for v in result[1:5])
        return SessionRefusal(reason, float(used), float(limit), float(asked))

    async def commit(self, hold: SessionHold, usd: float, tokens: int) -> None:
        await run_script(self._commit, list(hold.keys), [hold.member, usd, tokens, self.idle_ttl_ms])
