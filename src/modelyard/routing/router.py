"""Resolve a requested name to a model, and a model to one of its deployments.

Pure functions over plain data so they are tested with hand-built inputs and
reused unchanged by the planner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelyard.config import AliasConfig, FleetConfig
from modelyard.errors import ModelNotFound

CODE_MARKERS = re.compile(
    r"```|\bdef |\bclass |\bimport |\bfunction\b|\breturn\b|[{};]\s*$|\b(python|javascript|typescript|rust|golang|java|c\+\+|sql|regex|bash|code|program|compile|debug|bug)\b",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    """What the rule router looks at, extracted from a request."""

    text: str
    wants_json: bool = False
    wants_tools: bool = False


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The model chosen for a request and why."""

    model: str
    reason: str
    escalations: tuple[str, ...] = ()  # cascade: the models to try next if this one's answer fails its checks


def resolve_model(requested: str, fleet: FleetConfig, features: PromptFeatures) -> RouteDecision:
    """The model that serves ``requested``: itself, or an alias's pick."""
    if fleet.model(requested) is not None:
        return RouteDecision(requested, "requested")
    alias = fleet.alias(requested)
    if alias is None:
        known = ", ".join([m.name for m in fleet.models] + [a.name for a in fleet.aliases])
        raise ModelNotFound(f"The model '{requested}' does not exist (available: {known})", param="model")
    if alias.strategy == "cascade":
        return RouteDecision(alias.targets[0], "cascade", alias.targets[1:])
    return choose_by_rule(alias, features)


def choose_by_rule(alias: AliasConfig, features: PromptFeatures) -> RouteDecision:
    """Cheapest target (first) for short plain chat; strongest (last) for code, JSON, tools, long prompts."""
    strongest, cheapest = alias.targets[-1], alias.targets[0]
    if features.wants_tools:
        return RouteDecision(strongest, "rule:tools")
    if features.wants_json:
        return RouteDecision(strongest, "rule:json")
    if len(features.text) > alias.long_prompt_chars:
        return RouteDecision(strongest, "rule:long-prompt")
    if CODE_MARKERS.search(features.text):
        return RouteDecision(strongest, "rule:code")
    return RouteDecision(cheapest, "rule:short-chat")
