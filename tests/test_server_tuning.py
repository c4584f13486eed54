"""The serving process's collector settings (bench/profile_gateway.py measured why)."""

from __future__ import annotations

import gc

from modelyard.server import GC_GEN0_THRESHOLD, tune_gc


def test_tune_gc_raises_the_young_threshold_and_freezes_startup_objects() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
