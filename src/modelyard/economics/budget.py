"""Budgets enforced before the spend (no I/O, clock passed in).

Each request reserves its worst-case cost before any model is called; the
reservation is committed at the actual cost when the request ends, or
released when it fails. A request is refused when the tenant's spend plus
everything reserved by requests in flight plus this reservation would pass a
limit, so concurrent requests can never jointly overspend: the most a tenant
can end above its budget is what one request's actual cost exceeds its own
reservation by (retries are not reserved for).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime

PERIODS = ("day", "month", "total")
SECONDS_PER_DAY = 86_400  # POSIX time has no leap seconds: UTC days are whole multiples


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    day: float | None = None
    month: float | None = None
    total: float | None = None

    def of(self, period: str) -> float | None:
        return getattr(self, period)  # type: ignore[no-any-return]


def key_owner(key_id: str) -> str:
    """The budget book's name for an API key (tenants use their own id)."""
    return f"key:{key_id}"


def period_keys(now: float) -> dict[str, str]:
    """The day, month and total keys of the time ``now`` (formats the time it is given; reads no clock)."""
    return dict(_keys_of_day(int(now // SECONDS_PER_DAY)))


def utc_day(now: float) -> str:
    """``now``'s UTC date as YYYY-MM-DD (the ledger's ``day``), formatted once per day."""
    return _keys_of_day(int(now // SECONDS_PER_DAY))[0][1]


@functools.lru_cache(maxsize=4)
def _keys_of_day(day: int) -> tuple[tuple[str, str], ...]:
    # Every request asks, twice; formatting a date costs more than the rest of the budget check.
    start = datetime.fromtimestamp(day * SECONDS_PER_DAY, UTC)
    return (("day", start.strftime("%Y-%m-%d")), ("month", start.strftime("%Y-%m")), ("total", "all"))


@dataclass(slots=True)
class Hold:
    tenant: str
    amount: float
    periods: dict[str, str]
    open: bool = True


@dataclass(slots=True)
class BudgetBook:
    limits: dict[str, BudgetLimits] = field(default_factory=dict)
    spent: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (tenant, period, key) -> USD
    reserved: dict[str, float] = field(default_factory=dict)  # tenant -> USD held by requests in flight

    def remaining(self, tenant: str, now: float) -> dict[str, float]:
        limits = self.limits.get(tenant)
        if limits is None:
            return {}
        keys = period_keys(now)
        out = {}
        for period in PERIODS:
            limit = limits.of(period)
            if limit is not None:
                out[period] = limit - self.spent.get((tenant, period, keys[period]), 0.0) - self.reserved.get(tenant, 0.0)
        return out

    def reserve(self, tenant: str, amount: float, now: float) -> Hold | None:
        """A hold for ``amount``, or None when some limit would be passed."""
        left = self.remaining(tenant, now)
        if any(amount > value for value in left.values()):
            return None
        self.reserved[tenant] = self.reserved.get(tenant, 0.0) + amount
        return Hold(tenant, amount, period_keys(now))

    def commit(self, hold: Hold, actual: float) -> None:
        if not hold.open:
            return
        hold.open = False
        self.reserved[hold.tenant] = self.reserved.get(hold.tenant, 0.0) - hold.amount
        for period, key in hold.periods.items():
            slot = (hold.tenant, period, key)
            self.spent[slot] = self.spent.get(slot, 0.0) + actual

    def release(self, hold: Hold) -> None:
        self.commit(hold, 0.0)
