"""Rate-limit windows in Redis, shared by every modelyard replica that names the same Redis.

The same sliding 60 s windows as the in-process limiter, kept as one sorted
set of entries per scope and kind (score: Redis's own clock, so replicas with
skewed clocks agree), their amounts in a hash and a running total. Checking
every scope and taking from all of them is one Lua script: Redis runs scripts
one at a time, so two replicas can never both take the last unit. Keys expire
a little after the window, so an idle limit leaves nothing behind.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from modelyard.store.redis_client import run_script

PREFIX = "modelyard:rl"

# KEYS: per limited (scope, kind): the entries' sorted set, their amounts, the total.
# ARGV: window_ms, then per limited (scope, kind): limit, amount.
CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local member = ARGV[2]
local n = (#KEYS) / 3
local refused, retry = false, 0
local states = {}
for i = 0, n - 1 do
  local z, h, total = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
  for _, m in ipairs(old) do
    local amount = redis.call('HGET', h, m)
    if amount then redis.call('INCRBYFLOAT', total, -tonumber(amount)); redis.call('HDEL', h, m) end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  local used = tonumber(redis.call('GET', total) or '0')
  local limit, amount = tonumber(ARGV[3+2*i]), tonumber(ARGV[4+2*i])
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  local reset = 0
  if first[2] then reset = (window - (now - tonumber(first[2]))) / 1000 end
  if used + amount > limit then
    refused = true
    retry = math.max(retry, reset > 0 and reset or 1)
  end
  states[#states + 1] = tostring(limit - used)
  states[#states + 1] = tostring(reset)
end
if refused then return {0, tostring(retry), states} end
for i = 0, n - 1 do
  local z, h, total = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
  local amount = tonumber(ARGV[4+2*i])
  redis.call('ZADD', z, now, member)
  redis.call('HSET', h, member, amount)
  redis.call('INCRBYFLOAT', total, amount)
  for _, k in ipairs({z, h, total}) do redis.call('PEXPIRE', k, window + 1000) end
end
return {1, '0', states}
"""

# KEYS: per token scope: the amounts hash and the total. ARGV: member, actual amount.
SETTLE = """
for i = 0, (#KEYS) / 2 - 1 do
  local h, total = KEYS[2*i+1], KEYS[2*i+2]
  local old = redis.call('HGET', h, ARGV[1])
  if old then
    redis.call('HSET', h, ARGV[1], ARGV[2])
    redis.call('INCRBYFLOAT', total, tonumber(ARGV[2]) - tonumber(old))
  end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One limited (scope, kind): ``kind`` is ``requests`` or ``tokens``."""

    scope: str
    kind: str
    limit: int
    amount: int


@dataclass(frozen=True, slots=True)
class Taken:
    """What a check took: its entry's id and the token windows to settle."""

    member: str
    token_scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Checked:
    """A check's answer: ``taken`` is None when refused; ``states`` are (remaining before this request, reset s) per window."""

    taken: Taken | None
    retry_after_s: float
    states: tuple[tuple[float, float], ...]


class RedisWindows:
    """Sliding-window limits in Redis (``redis.asyncio`` client; the caller owns it)."""

    def __init__(self, client: Redis, window_s: float = 60.0, prefix: str = PREFIX) -> None:
        self.window_ms = int(window_s * 1000)
        self.prefix = prefix
        self._check = client.register_script(CHECK)
        self._settle = client.register_script(SETTLE)

    def _keys(self, scope: str, kind: str) -> list[str]:
        base = f"{self.prefix}:{kind}:{scope}"
        return [f"{base}:at", f"{base}:amount", f"{base}:total"]

    async def check(self, windows: list[Window]) -> Checked:
        """Check every window and, when all have room, take from all of them at once."""
        member = uuid.uuid4().hex
        keys = [k for w in windows for k in self._keys(w.scope, w.kind)]
        args: list[float | int | str] = [self.window_ms, member]
        for w in windows:
            args += [w.limit, w.amount]
        accepted, retry, flat = await run_script(self._check, keys, args)
        states = tuple((float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2))
        tokens = tuple(w.scope for w in windows if w.kind == "tokens")
        return Checked(Taken(member, tokens) if int(accepted) else None, float(retry), states)

    async def settle(self, taken: Taken, actual: int) -> None:
        """Correct the token windows from the estimate to the actual count (nothing when they have expired)."""
        if taken.token_scopes:
            keys = [k for scope in taken.token_scopes for k in self._keys(scope, "tokens")[1:]]
            await run_script(self._settle, keys, [taken.member, actual])
