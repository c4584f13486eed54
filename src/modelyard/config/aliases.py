"""The ``aliases`` section: names that resolve to one of several models per request."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

from modelyard.config.reader import Reader, show
from modelyard.config.schema import (
    DEFAULT_EMBEDDING_CACHE,
    DEFAULT_QUALITY_TARGET,
    AliasConfig,
    IntentConfig,
    ModelConfig,
    RouteRule,
    ValidatorConfig,
)

ALIAS_STRATEGIES = ("rule", "cascade", "learned")
VALIDATOR_KINDS = ("regex", "json_schema", "max_length")


def parse_aliases(root: Reader, models: tuple[ModelConfig, ...]) -> tuple[AliasConfig, ...]:
    raw = root.get("aliases") or {}
    if not isinstance(raw, Mapping):
        raise root.fail("aliases", "expected a mapping of alias name to alias")
    by_name = {m.name: m for m in models}
    aliases = []
    for name, body in raw.items():
        r = Reader(root.source, f"aliases.{name}", body)
        if name in by_name:
            raise r.fail("", f"alias {name!r} has the same name as a model")
        targets = r.get("targets")
        if not isinstance(targets, list) or not targets:
            raise r.fail("targets", "expected a non-empty list of model names")
        for i, target in enumerate(targets):
            model = by_name.get(target)
            if model is None:
                raise r.fail(f"targets[{i}]", f"unknown model {show(target)}")
            if model.kind != "chat":
                raise r.fail(f"targets[{i}]", f"model {target!r} is not a chat model")
        aliases.append(_alias(r, str(name), tuple(targets), by_name))
        r.reject_unknown()
    return tuple(aliases)


def _alias(r: Reader, name: str, targets: tuple[str, ...], by_name: Mapping[str, ModelConfig]) -> AliasConfig:
    strategy = r.choice("strategy", ALIAS_STRATEGIES, "rule")
    target = r.optional_number("quality_target", 0.0, 1.0)
    alias = AliasConfig(
        name=name,
        targets=targets,
        strategy=strategy,  # type: ignore[arg-type]
        long_prompt_chars=r.integer("long_prompt_chars", 2000),
        description=str(r.get("description", "") or ""),
        validators=_parse_validators(r),
        min_mean_logprob=r.optional_number("min_mean_logprob", -1e9, 0.0),
        rules=_parse_rules(r, targets),
        intents=_parse_intents(r, targets),
        embedding_model=str(r.get("embedding_model", "") or ""),
        router_file=str(r.get("router_file", "") or ""),
        quality_target=DEFAULT_QUALITY_TARGET if target is None else target,
        quality_lambda=r.optional_number("quality_lambda", 0.0),
        embedding_cache=r.integer("embedding_cache", DEFAULT_EMBEDDING_CACHE, minimum=0),
        lexical_first=r.boolean("lexical_first", True),
    )
    if alias.embedding_model:
        model = by_name.get(alias.embedding_model)
        if model is None or model.kind != "embedding":
            raise r.fail("embedding_model", f"expected an embedding model of the fleet, got {show(alias.embedding_model)}")
    elif alias.intents or strategy == "learned":
        raise r.fail("embedding_model", "is required by intents and the learned strategy (they compare prompt embeddings)")
    if strategy == "learned" and not alias.router_file:
        raise r.fail("router_file", "is required by the learned strategy (a file written by `modelyard router train`)")
    return alias


def _parse_rules(r: Reader, targets: tuple[str, ...]) -> tuple[RouteRule, ...]:
    rules = []
    for i, v in enumerate(r.each("rules", "rules")):
        rule = RouteRule(
            model=_target(v, targets),
            name=str(v.get("name", "") or f"rule{i}"),
            header=str(v.get("header", "") or ""),
            tenant=str(v.get("tenant", "") or ""),
            key=str(v.get("key", "") or ""),
            tools=_optional_bool(v, "tools"),
            json=_optional_bool(v, "json"),
            code=_optional_bool(v, "code"),
            min_prompt_chars=v.integer("min_prompt_chars", 0, minimum=0),
        )
        v.reject_unknown()
        rules.append(rule)
    return tuple(rules)


def _parse_intents(r: Reader, targets: tuple[str, ...]) -> tuple[IntentConfig, ...]:
    raw = r.get("intents") or {}
    if not isinstance(raw, Mapping):
        raise r.fail("intents", "expected a mapping of intent name to {model, examples, threshold}")
    intents = []
    for name, body in raw.items():
        v = Reader(r.source, f"{r.at('intents')}.{name}", body)
        examples = v.names("examples")
        if not examples:
            raise v.fail("examples", "expected at least one example utterance")
        threshold = v.optional_number("threshold", -1.0, 1.0)
        intents.append(IntentConfig(name=str(name), model=_target(v, targets), examples=examples, threshold=0.6 if threshold is None else threshold))
        v.reject_unknown()
    return tuple(intents)


def _target(v: Reader, targets: tuple[str, ...]) -> str:
    model = v.string("model")
    if model not in targets:
        raise v.fail("model", f"{model!r} is not one of the alias's targets ({', '.join(targets)})")
    return model


def _optional_bool(v: Reader, key: str) -> bool | None:
    return None if v.data.get(key) is None else v.boolean(key, False)


def _parse_validators(r: Reader) -> tuple[ValidatorConfig, ...]:
    validators = []
    for v in r.each("validators", "validators"):
        kind = v.choice("type", VALIDATOR_KINDS, "")
        if kind == "regex":
            pattern = v.string("pattern")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise v.fail("pattern", f"invalid regular expression: {exc}") from None
            validators.append(ValidatorConfig(kind="regex", pattern=pattern))
        elif kind == "json_schema":
            schema = v.get("schema")
            if not isinstance(schema, Mapping):
                raise v.fail("schema", "expected a JSON schema object")
            validators.append(ValidatorConfig(kind="json_schema", schema=MappingProxyType(dict(schema))))
        else:
            validators.append(ValidatorConfig(kind="max_length", max_chars=v.integer("max_chars", 0)))
        v.reject_unknown()
    return tuple(validators)
