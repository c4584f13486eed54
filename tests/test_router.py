"""The router decides from plain data, with no I/O: hand-built inputs, exact decisions."""

from __future__ import annotations

import pytest

from modelyard.config.defaults import default_fleet
from modelyard.errors import ModelNotFound
from modelyard.routing.router import PromptFeatures, resolve_model

FLEET = default_fleet()


@pytest.mark.parametrize(
    ("features", "model", "reason"),
    [
        (PromptFeatures("What is the capital of France?"), "smollm2-135m", "rule:short-chat"),
        (PromptFeatures("Write a Python function that reverses a list"), "qwen2.5-0.5b", "rule:code"),
        (PromptFeatures("fix this:\n```\nx = 1\n```"), "qwen2.5-0.5b", "rule:code"),
        (PromptFeatures("Name a colour", wants_json=True), "qwen2.5-0.5b", "rule:json"),
        (PromptFeatures("Hello", wants_tools=True), "qwen2.5-0.5b", "rule:tools"),
        (PromptFeatures("tell me a story " * 200), "qwen2.5-0.5b", "rule:long-prompt"),
    ],
)
def test_auto_alias_rule(features: PromptFeatures, model: str, reason: str) -> None:
    decision = resolve_model("auto", FLEET, features)
    assert (decision.model, decision.reason) == (model, reason)


def test_direct_model_and_unknown_model() -> None:
    assert resolve_model("smollm2-135m", FLEET, PromptFeatures("x")).reason == "requested"
    with pytest.raises(ModelNotFound) as info:
        resolve_model("gpt-7", FLEET, PromptFeatures("x"))
    assert info.value.status == 404 and "smollm2-135m" in info.value.message
