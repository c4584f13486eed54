"""The stage kinds a fleet file's ``stages`` list may name."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from modelyard.pipeline.context_budget import ContextBudgetFactory
from modelyard.pipeline.loop_guard import LoopGuardFactory
from modelyard.pipeline.pii_filter import PiiFilterFactory
from modelyard.pipeline.response_cache import ResponseCacheFactory
from modelyard.pipeline.session_budget import SessionBudgetFactory
from modelyard.pipeline.slots import StageFactory


def default_registry() -> Mapping[str, StageFactory]:
    """Every stage kind modelyard ships, by the name the fleet file uses."""
    return MappingProxyType({
        "response_cache": ResponseCacheFactory(),
        "context_budget": ContextBudgetFactory(),
        "pii_filter": PiiFilterFactory(),
        "loop_guard": LoopGuardFactory(),
        "session_budget": SessionBudgetFactory(),
    })
