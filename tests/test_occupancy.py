"""Engine occupancy integrals (backends/occupancy.py) on a hand-driven clock."""

from __future__ import annotations

import pytest

from modelyard.backends.occupancy import Occupancy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_busy_and_slot_seconds_integrate_over_overlapping_requests() -> None:
    clock = Clock()
    occupancy = Occupancy(clock=clock)
    assert occupancy.totals() == (0.0, 0.0)
    occupancy.started()  # t=100: one in flight
    clock.now = 102.0
    occupancy.started()  # t=102: two
    clock.now = 103.0
    occupancy.ended()  # t=103: one
    clock.now = 104.0
    assert occupancy.totals() == pytest.approx((4.0, 2 * 1 + 1 * 2 + 1 * 1))  # read mid-request counts the open span
    occupancy.ended()  # t=104: idle
    clock.now = 110.0  # idle time adds nothing
    assert occupancy.totals() == pytest.approx((4.0, 5.0))
    assert occupancy.in_flight == 0
    occupancy.started()
    clock.now = 111.5
    assert occupancy.totals() == pytest.approx((5.5, 6.5))


def test_an_extra_end_never_goes_below_zero() -> None:
    occupancy = Occupancy(clock=Clock())
    occupancy.ended()
    assert occupancy.in_flight == 0
    assert occupancy.totals() == (0.0, 0.0)
