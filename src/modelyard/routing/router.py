"""Resolve a requested name to a model, and a model to one of its deployments.

Pure functions over plain data so they are tested with hand-built inputs and
reused unchanged by the planner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from modelyard.config import AliasConfig, FleetConfig, RouteRule
from modelyard.errors import ModelNotFound
from modelyard.routing.learned import LearnedRouter
from modelyard.routing.semantic import IntentIndex

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
    headers: Mapping[str, str] = field(default_factory=dict)
    tenant: str = ""
    key_id: str = ""
    embedding: npt.NDArray[np.float32] | None = None  # the prompt's vector, when the alias compares embeddings
    words: npt.NDArray[np.float32] | None = None  # the learned router's word view of the prompt, when it can settle picks
    quality_target: float | None = None  # the request's x-modelyard-quality, overriding the alias's


@dataclass(frozen=True, slots=True)
class AliasAssets:
    """What an alias routes with beyond its config: loaded once at startup (the learned router) or on first use (intent vectors)."""

    learned: LearnedRouter | None = None
    intents: IntentIndex | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The model chosen for a request and why."""

    model: str
    reason: str
    escalations: tuple[str, ...] = ()  # cascade: the models to try next if this one's answer fails its checks
    predicted_quality: float | None = None  # learned: the chosen model's predicted chance of a good answer
    label: str = ""  # a bounded name for metrics when the reason carries numbers (intent similarity, learned target)

    @property
    def kind(self) -> str:
        """How the model was chosen, without per-request numbers: ``requested``, ``rule:<name>``, ``intent:<name>``, ``cascade``, ``learned``."""
        return self.label or self.reason

    def describe(self) -> str:
        """The reason, with the prediction when there is one (the API adds the model that finally answered)."""
        return self.reason if self.predicted_quality is None else f"{self.reason}; predicted_quality={self.predicted_quality:.3f}"


def resolve_model(requested: str, fleet: FleetConfig, features: PromptFeatures, assets: Mapping[str, AliasAssets] | None = None) -> RouteDecision:
    """The model that serves ``requested``: itself, or an alias's pick (rules, then intents, then its strategy)."""
    if fleet.model(requested) is not None:
        return RouteDecision(requested, "requested")
    alias = fleet.alias(requested)
    if alias is None:
        known = ", ".join([m.name for m in fleet.models] + [a.name for a in fleet.aliases])
        raise ModelNotFound(f"The model '{requested}' does not exist (available: {known})", param="model")
    found = (assets or {}).get(alias.name, AliasAssets())
    rule = match_rule(alias.rules, features)
    if rule is not None:
        return RouteDecision(rule.model, f"rule:{rule.name}")
    if found.intents is not None and features.embedding is not None:
        match = found.intents.match(features.embedding)
        if match is not None:
            reason = f"intent:{match.intent.name}:similarity={match.similarity:.2f}"
            return RouteDecision(match.intent.model, reason, label=f"intent:{match.intent.name}")
    if alias.strategy == "cascade":
        return RouteDecision(alias.targets[0], "cascade", alias.targets[1:])
    if alias.strategy == "learned" and found.learned is not None:
        decision = choose_by_prediction(alias, found.learned, features) if features.embedding is not None else settled_by_words(alias, found.learned, features)
        if decision is not None:
            return decision
    return choose_by_rule(alias, features)


def match_rule(rules: tuple[RouteRule, ...], features: PromptFeatures) -> RouteRule | None:
    """The first rule whose every condition holds."""
    for rule in rules:
        if _holds(rule, features):
            return rule
    return None


def _holds(rule: RouteRule, features: PromptFeatures) -> bool:
    if rule.header:
        name, _, value = rule.header.partition("=")
        seen = features.headers.get(name.strip().lower())
        if seen is None or (value and seen != value.strip()):
            return False
    checks = (
        not rule.tenant or rule.tenant == features.tenant,
        not rule.key or rule.key == features.key_id,
        rule.tools is None or rule.tools == features.wants_tools,
        rule.json is None or rule.json == features.wants_json,
        len(features.text) >= rule.min_prompt_chars,
    )
    # The pattern runs last and only for a rule that asks, so the other rules cost no scan of the prompt.
    return all(checks) and (rule.code is None or rule.code == looks_like_code(features.text))


CODE_SCAN_CHARS = 2000  # of a long prompt, the start and the end are scanned: the pattern costs about 0.2 ms per 1,000 characters


def looks_like_code(text: str) -> bool:
    """Whether ``text`` shows :data:`CODE_MARKERS` (the rule strategy's code test and a rule's ``code`` condition): in its
    first and last :data:`CODE_SCAN_CHARS` characters when it is longer, so a long prompt costs no more than a short one."""
    if len(text) > 2 * CODE_SCAN_CHARS:
        text = text[:CODE_SCAN_CHARS] + "\n" + text[-CODE_SCAN_CHARS:]
    return CODE_MARKERS.search(text) is not None


def choose_by_prediction(alias: AliasConfig, router: LearnedRouter, features: PromptFeatures) -> RouteDecision:
    """The learned router's pick: the request's quality target, else the alias's lambda, else the alias's target."""
    assert features.embedding is not None
    target, lam = _goal(alias, features)
    choice = router.route(features.embedding, target=target, lam=lam, prompt=features.text, words=features.words)
    return RouteDecision(choice.model, choice.reason, predicted_quality=choice.predicted_quality, label="learned")


def settled_by_words(alias: AliasConfig, router: LearnedRouter, features: PromptFeatures) -> RouteDecision | None:
    """The learned router's pick from the prompt's word view alone, when no embedding could change it (see
    :meth:`LearnedRouter.settle`) and no intent of the alias names another model; None when the prompt needs its
    embedding. (Intents are checked on the vector before the learned router, so one that names the settled pick's
    own model cannot change the model served, only the reason given.)"""
    if features.words is None:
        return None
    choice = router.settle(features.words, *_goal(alias, features))
    if choice is None or any(intent.model != choice.model for intent in alias.intents):
        return None  # an intent matched by the vector could send the prompt elsewhere: the vector decides
    return RouteDecision(choice.model, choice.reason, predicted_quality=choice.predicted_quality, label="learned")


def _goal(alias: AliasConfig, features: PromptFeatures) -> tuple[float | None, float | None]:
    """(target, lambda): the request's quality target, else the alias's lambda, else the alias's target."""
    if features.quality_target is None and alias.quality_lambda is not None:
        return None, alias.quality_lambda
    return (alias.quality_target if features.quality_target is None else features.quality_target), None


def choose_by_rule(alias: AliasConfig, features: PromptFeatures) -> RouteDecision:
    """Cheapest target (first) for short plain chat; strongest (last) for code, JSON, tools, long prompts."""
    strongest, cheapest = alias.targets[-1], alias.targets[0]
    if features.wants_tools:
        return RouteDecision(strongest, "rule:tools")
    if features.wants_json:
        return RouteDecision(strongest, "rule:json")
    if len(features.text) > alias.long_prompt_chars:
        return RouteDecision(strongest, "rule:long-prompt")
    if looks_like_code(features.text):
        return RouteDecision(strongest, "rule:code")
    return RouteDecision(cheapest, "rule:short-chat")
