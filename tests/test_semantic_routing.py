"""Rules, intents and the learned router inside an alias: hand-built inputs, exact decisions, no I/O."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.config import ConfigError, parse_config
from modelyard.config.schema import IntentConfig
from modelyard.routing.learned import LearnedRouter
from modelyard.routing.router import AliasAssets, PromptFeatures, resolve_model
from modelyard.routing.semantic import IntentIndex

MODELS = {
    "cheap": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}]},
    "coder": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}]},
    "strong": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}]},
    "embedder": {"kind": "embedding", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}]},
}


def fleet(alias: dict[str, object]):  # type: ignore[no-untyped-def]
    return parse_config({"models": MODELS, "aliases": {"smart": {"targets": ["cheap", "coder", "strong"], **alias}}})


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


CODE_INTENT = {"code": {"model": "coder", "examples": ["write a function", "fix my bug"], "threshold": 0.8}}


def intent_assets(config) -> dict[str, AliasAssets]:  # type: ignore[no-untyped-def]
    alias = config.alias("smart")
    # The two examples point along x and y; the test's prompts are placed relative to them.
    return {"smart": AliasAssets(intents=IntentIndex.build(alias.intents, np.stack([unit(1, 0, 0), unit(0, 1, 0)])))}


def test_rules_match_in_order_on_header_tenant_key_and_features() -> None:
    config = fleet({
        "embedding_model": "embedder",
        "rules": [
            {"name": "vip", "header": "x-team=research", "model": "strong"},
            {"name": "acme", "tenant": "acme", "model": "coder"},
            {"name": "key", "key": "key_1", "model": "strong"},
            {"name": "tools", "tools": True, "model": "strong"},
            {"name": "long", "min_prompt_chars": 50, "model": "strong"},
        ],
    })
    def pick(**kw: object) -> str:
        return resolve_model("smart", config, PromptFeatures(**{"text": "hi", **kw})).reason  # type: ignore[arg-type]

    assert pick(headers={"x-team": "research"}, tenant="acme") == "rule:vip"
    assert pick(headers={"x-team": "sales"}, tenant="acme") == "rule:acme"
    assert pick(key_id="key_1") == "rule:key"
    assert pick(wants_tools=True) == "rule:tools"
    assert pick(text="x" * 50) == "rule:long"
    assert pick() == "rule:short-chat"  # no rule holds: the alias's own strategy


def test_intent_by_nearest_example_above_threshold() -> None:
    config = fleet({"embedding_model": "embedder", "intents": CODE_INTENT})
    assets = intent_assets(config)
    near = resolve_model("smart", config, PromptFeatures("anything", embedding=unit(0.3, 1, 0)), assets)
    assert near.model == "coder" and near.reason == "intent:code:similarity=0.96"
    far = resolve_model("smart", config, PromptFeatures("anything", embedding=unit(1, 1, 1)), assets)
    assert far.reason == "rule:short-chat"  # similarity 0.58 < 0.8
    no_vector = resolve_model("smart", config, PromptFeatures("anything"), assets)
    assert no_vector.reason == "rule:short-chat"  # the embedder was down: rules only


def test_intent_index_prefers_the_most_similar_intent() -> None:
    intents = (IntentConfig("a", "cheap", ("x",), 0.1), IntentConfig("b", "strong", ("y", "z"), 0.1))
    index = IntentIndex.build(intents, np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)]))
    match = index.match(unit(0.2, 0.1, 1))
    assert match is not None and match.intent.name == "b"
    with pytest.raises(ValueError):
        IntentIndex.build(intents, np.stack([unit(1, 0, 0)]))


def learned_assets() -> dict[str, AliasAssets]:
    # Prompts along x: only the strong model answers; along y: all three do.
    embeddings = np.stack([unit(1, 0, 0)] * 4 + [unit(0, 1, 0)] * 4)
    quality = np.array([[0, 0, 1]] * 4 + [[1, 1, 1]] * 4, dtype=np.float32)
    router = LearnedRouter(("cheap", "coder", "strong"), np.array([1, 2, 10], dtype=np.float32), embeddings, quality, k=4, prior_weight=0.0)
    return {"smart": AliasAssets(learned=router)}


def test_learned_alias_takes_the_cheapest_model_that_reaches_the_target() -> None:
    config = fleet({"strategy": "learned", "embedding_model": "embedder", "router_file": "r.npz", "quality_target": 0.9})
    assets = learned_assets()
    hard = resolve_model("smart", config, PromptFeatures("q", embedding=unit(1, 0, 0)), assets)
    easy = resolve_model("smart", config, PromptFeatures("q", embedding=unit(0, 1, 0)), assets)
    assert (hard.model, easy.model) == ("strong", "cheap")
    assert hard.predicted_quality == pytest.approx(1.0) and hard.describe() == "learned:target=0.9; predicted_quality=1.000"
    # The request's x-modelyard-quality overrides the alias: 0 takes the cheapest model everywhere.
    assert resolve_model("smart", config, PromptFeatures("q", embedding=unit(1, 0, 0), quality_target=0.0), assets).model == "cheap"


def test_a_code_rule_takes_prompts_with_code_markers_and_needs_no_vector() -> None:
    config = fleet({"rules": [{"name": "code", "code": True, "model": "coder"}, {"name": "prose", "code": False, "model": "strong"}]})

    def pick(text: str) -> str:
        return resolve_model("smart", config, PromptFeatures(text)).reason

    for text in ("Write a Python function that reverses a list", "Fix the bug in this code", "```\nx = 1\n```", "if (a) {"):
        assert pick(text) == "rule:code", text
    for text in ("What is the capital of France?", "Tell me a story about a classy cat"):
        assert pick(text) == "rule:prose", text
    prose = "The quick brown fox jumps over the lazy dog. " * 500  # 22,500 characters
    assert pick(prose + "Now write it as a Python function.") == "rule:code"  # the end is scanned
    assert pick("```\n" + prose) == "rule:code"  # and the start
    assert pick(prose[:11000] + " def f(): " + prose[:11000]) == "rule:prose"  # not the middle of a long prompt (docs/configuration.md)


def test_learned_alias_by_lambda() -> None:
    config = fleet({"strategy": "learned", "embedding_model": "embedder", "router_file": "r.npz", "quality_lambda": 5.0})
    decision = resolve_model("smart", config, PromptFeatures("q", embedding=unit(1, 0, 0)), learned_assets())
    assert decision.model == "cheap" and decision.reason == "learned:lambda=5"  # 1 - 5 x 1 < 0 - 5 x 0.1


@pytest.mark.parametrize(
    ("alias", "problem"),
    [
        ({"strategy": "learned", "router_file": "r.npz"}, "embedding_model: is required"),
        ({"strategy": "learned", "embedding_model": "embedder"}, "router_file: is required"),
        ({"embedding_model": "cheap"}, "expected an embedding model"),
        ({"embedding_model": "embedder", "intents": {"code": {"model": "nope", "examples": ["x"]}}}, "not one of the alias's targets"),
        ({"embedding_model": "embedder", "intents": {"code": {"model": "coder", "examples": []}}}, "at least one example"),
        ({"rules": [{"model": "strong", "colour": "red"}]}, "unknown field"),
        ({"rules": [{"model": "strong", "code": "yes"}]}, "code: expected true or false"),
        ({"strategy": "learned", "embedding_model": "embedder", "router_file": "r", "quality_target": 2}, "quality_target"),
        ({"strategy": "learned", "embedding_model": "embedder", "router_file": "r", "embedding_cache": -1}, "embedding_cache"),
        ({"strategy": "learned", "embedding_model": "embedder", "router_file": "r", "lexical_first": "yes"}, "lexical_first: expected true or false"),
    ],
)
def test_alias_config_errors_name_the_field(alias: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        fleet(alias)
    assert problem in str(info.value)


def test_routing_embedding_is_charged_to_the_request_but_not_counted_as_an_attempt() -> None:
    from modelyard.config.defaults import default_fleet
    from modelyard.pipeline.costing import PriceCatalog
    from modelyard.pipeline.types import Attempt, Request
    from modelyard.protocol import Usage

    request = Request(operation="chat", model="auto", request_id="r1")
    request.attempts.append(Attempt("smollm2-135m", "smollm2-135m/0", 0.0, outcome="ok", usage=Usage(10, 2), busy_s=1.8))
    request.overhead.append(Attempt("minilm-l6", "minilm-l6/0", 0.0, outcome="ok", usage=Usage(12, 0), busy_s=0.36))
    # Default prices: smollm2 $0.02 and minilm $0.01 per replica-hour.
    assert PriceCatalog(default_fleet()).actual(request) == pytest.approx(1.8 * 0.02 / 3600 + 0.36 * 0.01 / 3600)
    assert request.usage() == Usage(10, 2) and len(request.attempts) == 1


def test_the_prompt_vector_cache_keeps_the_most_recently_used() -> None:
    from modelyard.pipeline.route_inputs import VectorCache

    cache = VectorCache(2)
    cache.put("a", unit(1, 0, 0))
    cache.put("b", unit(0, 1, 0))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", unit(0, 0, 1))  # so "b" goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    kept = cache.get("c")
    assert kept is not None and not kept.flags.writeable  # shared by requests: nobody may change it in place
    off = VectorCache(0)
    off.put("a", unit(1, 0, 0))
    assert off.get("a") is None
