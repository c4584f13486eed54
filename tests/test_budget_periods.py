"""Budget periods: which day and month a spend counts against (pure; the time is passed in)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelyard.economics.budget import BudgetBook, BudgetLimits, period_keys, utc_day


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("moment", "day", "month"),
    [
        ("2026-12-31T23:59:59.999", "2026-12-31", "2026-12"),
        ("2027-01-01T00:00:00", "2027-01-01", "2027-01"),
        ("2028-02-29T12:00:00", "2028-02-29", "2028-02"),
        ("1970-01-01T00:00:00", "1970-01-01", "1970-01"),
    ],
)
def test_a_moment_counts_against_its_utc_day_and_month(moment: str, day: str, month: str) -> None:
    assert period_keys(at(moment)) == {"day": day, "month": month, "total": "all"}
    assert utc_day(at(moment)) == day  # the ledger's day column agrees with the budget's day


def test_the_keys_follow_the_clock_across_midnight() -> None:
    before, after = at("2026-12-31T23:59:59"), at("2027-01-01T00:00:01")
    for _ in range(3):  # asked again and again, as every request does: still the moment's own day
        assert period_keys(before)["day"] == "2026-12-31" and period_keys(after)["day"] == "2027-01-01"
    keys = period_keys(before)
    keys["day"] = "changed"  # a caller's copy: changing it changes nothing for the next caller
    assert period_keys(before)["day"] == "2026-12-31"


def test_a_daily_budget_starts_again_at_utc_midnight() -> None:
    book = BudgetBook(limits={"t": BudgetLimits(day=1.0)})
    hold = book.reserve("t", 0.8, at("2026-12-31T23:00:00"))
    assert hold is not None
    book.commit(hold, 0.8)
    assert book.reserve("t", 0.5, at("2026-12-31T23:30:00")) is None
    assert book.reserve("t", 0.5, at("2027-01-01T00:00:00")) is not None
