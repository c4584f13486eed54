"""The pure shaping layer with hand-built inputs: cache keys and guards, the adaptive threshold, context trimming, PII."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.protocol import ModelCall, Sampling
from modelyard.shaping import pii
from modelyard.shaping.adaptive import AdaptivePolicy, AdaptiveThreshold, Candidate, answers_agree, choose_cut
from modelyard.shaping.cache_keys import CachePolicy, bypass_reason, exact_key, semantic_scope, semantic_text
from modelyard.shaping.context import ContextOverflow, approximate_tokens, message_tokens, trim
from modelyard.shaping.polarity import opposition


def call(content: str = "What is 2+2?", **sampling: Any) -> ModelCall:
    defaults: dict[str, Any] = {"temperature": 0.0, "max_tokens": 16}
    return ModelCall(kind="chat", model="m", sampling=Sampling(**(defaults | sampling)), messages=({"role": "user", "content": content},))


# --- cache keys -------------------------------------------------------------------------------------------------

def test_every_answer_changing_parameter_changes_the_key() -> None:
    base = exact_key(call(), "m", "tenant:a")
    variants = [
        exact_key(call("What is 2+3?"), "m", "tenant:a"),
        exact_key(call(), "other-model", "tenant:a"),
        exact_key(call(), "m", "tenant:b"),
        exact_key(call(max_tokens=17), "m", "tenant:a"),
        exact_key(call(temperature=0.5, seed=1), "m", "tenant:a"),
        exact_key(call(top_p=0.9), "m", "tenant:a"),
        exact_key(call(stop=("\n",)), "m", "tenant:a"),
        exact_key(call(seed=3), "m", "tenant:a"),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_who_asks_does_not_change_the_key() -> None:
    import dataclasses

    assert exact_key(dataclasses.replace(call(), user="alice"), "m", "s") == exact_key(dataclasses.replace(call(), user="bob"), "m", "s")


def test_bypass_reasons() -> None:
    policy = CachePolicy()
    assert bypass_reason(call(), 1, policy) is None
    assert bypass_reason(call(), 2, policy) == "n > 1"
    assert bypass_reason(call(temperature=0.7), 1, policy) == "sampled without a seed (temperature > 0)"
    assert bypass_reason(call(temperature=None), 1, policy) is not None  # the API's default temperature is 1
    assert bypass_reason(call(temperature=0.7, seed=5), 1, policy) is None
    assert bypass_reason(call(temperature=0.7), 1, CachePolicy(sampled=True)) is None
    assert bypass_reason(call(logprobs=True), 1, policy) == "logprobs asked for"


def test_semantic_text_only_for_single_turns_without_tools() -> None:
    policy = CachePolicy()
    assert semantic_text(call("hi there"), policy) == "hi there"
    turns = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"})
    multi = ModelCall(kind="chat", model="m", messages=turns)
    assert semantic_text(multi, policy) is None
    assert semantic_text(multi, CachePolicy(semantic_multi_turn=True)) == "c"
    tools = ModelCall(kind="chat", model="m", messages=turns[:1], tools=({"type": "function", "function": {"name": "f"}},))
    assert semantic_text(tools, policy) is None
    system = ModelCall(kind="chat", model="m", messages=({"role": "system", "content": "be terse"}, {"role": "user", "content": "q"}))
    assert semantic_text(system, policy) == "q"
    other_system = ModelCall(kind="chat", model="m", messages=({"role": "system", "content": "be verbose"}, {"role": "user", "content": "q"}))
    assert semantic_scope(system, "m", "s") != semantic_scope(other_system, "m", "s")  # the system prompt is part of the scope


# --- polarity guard -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b"), [
    ("How do I enable 2FA?", "How do I disable 2FA?"),
    ("Is X safe?", "Is X unsafe?"),
    ("Is it legal to drive at 16?", "Is it illegal to drive at 16?"),
    ("Can I drink coffee while pregnant?", "Can I not drink coffee while pregnant?"),
    ("Is 17 prime?", "Is 21 prime?"),
    ("Best hotels in Paris?", "Best hotels in Rome?"),
    ("Convert ethanol to acid", "Convert acid to ethanol"),
])
def test_opposites_are_vetoed(a: str, b: str) -> None:
    assert opposition(a, b) is not None
    assert opposition(b, a) is not None


@pytest.mark.parametrize(("a", "b"), [
    ("How do I improve my English?", "how can I improve my english"),
    ("What are good tips for self study?", "What are the smart tips for self studying?"),
])
def test_paraphrases_pass(a: str, b: str) -> None:
    assert opposition(a, b) is None


# --- adaptive threshold -------------------------------------------------------------------------------------------

def test_adaptive_uses_the_static_threshold_until_it_has_labels() -> None:
    model = AdaptiveThreshold(AdaptivePolicy(static_threshold=0.9, explore_rate=0.0))
    assert model.decide(Candidate(0.95, "a b", "a b"), 0.5) == "hit"
    assert model.decide(Candidate(0.85, "a b", "a c"), 0.5) == "miss"
    assert model.decide(Candidate(0.5, "a", "b"), 0.5) == "miss"  # below the floor


def _learned(label: Callable[[float, float], bool], policy: AdaptivePolicy, count: int = 1500) -> AdaptiveThreshold:
    rng = random.Random(1)
    model = AdaptiveThreshold(policy)
    for _ in range(count):
        similarity = rng.uniform(0.75, 1.0)
        runner_up = similarity - rng.uniform(0.0, 0.1)
        model.observe(Candidate(similarity, "how do I x", "how do I x", runner_up), label(similarity, runner_up))
    return model


def test_adaptive_learns_where_hits_are_right() -> None:
    """Labelled candidates say hits are right from 0.85 up: the model serves 0.88 that the static 0.95 refused, and not 0.8."""
    policy = AdaptivePolicy(static_threshold=0.95, target_error=0.05, explore_rate=0.0, refit_every=50, min_labels=200, serve_floor=0.8)
    model = _learned(lambda similarity, _: similarity > 0.85, policy)
    assert model.weights is not None and model.cut is not None
    assert model.decide(Candidate(0.88, "how do I x", "how do I x", 0.8), 0.5) == "hit"
    assert model.decide(Candidate(0.8, "how do I x", "how do I x", 0.7), 0.5) == "miss"
    # nothing under the serving floor, however sure the model is ...
    strict = _learned(lambda similarity, _: similarity > 0.85, dataclasses.replace(policy, serve_floor=0.9))
    assert strict.decide(Candidate(0.88, "how do I x", "how do I x", 0.8), 0.5) == "miss"
    # ... unless the static threshold itself is set under it
    low = _learned(lambda similarity, _: similarity > 0.85, dataclasses.replace(policy, serve_floor=0.9, static_threshold=0.87))
    assert low.decide(Candidate(0.88, "how do I x", "how do I x", 0.8), 0.5) == "hit"


def test_adaptive_refuses_a_query_half_way_between_two_entries() -> None:
    """Right only when the candidate is clearly nearer than the next entry: at one similarity, the margin decides."""
    policy = AdaptivePolicy(static_threshold=0.99, target_error=0.05, explore_rate=0.0, refit_every=50, min_labels=200, serve_floor=0.8)
    model = _learned(lambda similarity, runner_up: similarity - runner_up > 0.04, policy)
    assert model.decide(Candidate(0.93, "how do I x", "how do I x", 0.85), 0.5) == "hit"
    assert model.decide(Candidate(0.93, "how do I x", "how do I x", 0.925), 0.5) == "miss"


def test_adaptive_falls_back_to_the_static_threshold_when_no_cut_is_safe() -> None:
    policy = AdaptivePolicy(static_threshold=0.97, target_error=0.01, explore_rate=0.0, refit_every=50, min_labels=200)
    model = _learned(lambda similarity, _: similarity > 0.9 and random.Random(similarity).random() < 0.7, policy)  # 30% wrong everywhere
    assert model.weights is not None and model.cut is None
    assert model.decide(Candidate(0.98, "q", "q", 0.5), 0.5) == "hit"
    assert model.decide(Candidate(0.95, "q", "q", 0.5), 0.5) == "miss"


def test_choose_cut_on_hand_built_labels() -> None:
    scores = np.arange(100, dtype=np.float64)
    labels = (scores >= 40).astype(np.float64)  # the 40 lowest scores are wrong
    weights = np.ones(100)
    assert choose_cut(scores, labels, weights, target=0.0, z=0.0) == 40.0
    assert choose_cut(scores, labels, weights, target=0.1, z=0.0) == 34.0  # 6 wrong of 66 is within 10%, 7 of 67 is not
    assert choose_cut(scores, labels, weights, target=0.1, z=1.64) > 34.0  # the bound asks for a margin
    assert choose_cut(scores, np.zeros(100), weights, target=0.1, z=0.0) is None
    # an explored label counts 1/explore_rate times: one wrong answer at the top weighs as ten
    labels[99] = 0.0
    assert choose_cut(scores, labels, weights, target=0.1, z=0.0) == 35.0
    heavy = weights.copy()
    heavy[99] = 10.0
    assert choose_cut(scores, labels, heavy, target=0.1, z=0.0) is None


def test_adaptive_explores_a_share_of_accepted_candidates() -> None:
    model = AdaptiveThreshold(AdaptivePolicy(static_threshold=0.9, explore_rate=0.1, validated_explore_share=0.5))
    assert model.decide(Candidate(0.95, "q", "q"), 0.04) == "explore"
    assert model.decide(Candidate(0.95, "q", "q"), 0.06) == "hit"  # above the static threshold: half the rate
    assert model.explore_probability(Candidate(0.85, "q", "q")) == 0.1  # where only the learned cut would serve


def test_answers_agree_by_word_overlap() -> None:
    assert answers_agree("Paris is the capital of France.", "The capital of France is Paris")
    assert not answers_agree("Paris", "Berlin is the capital")


# --- context trimming ---------------------------------------------------------------------------------------------

COUNT = approximate_tokens(3.0)
ROLES = st.sampled_from(["user", "assistant", "tool_pair", "system"])


def _conversation(kinds: list[str], sizes: list[int]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for i, (kind, size) in enumerate(zip(kinds, sizes, strict=False)):
        text = "w " * size
        if kind == "tool_pair":
            messages.append({"role": "assistant", "content": None, "tool_calls": [{"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
            messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": text})
        else:
            messages.append({"role": kind, "content": text})
    messages.append({"role": "user", "content": "last question"})
    return messages


def _pairs_intact(messages: tuple[dict[str, Any], ...]) -> bool:
    calls = {c["id"] for m in messages for c in m.get("tool_calls") or []}
    results = {m["tool_call_id"] for m in messages if m.get("role") == "tool"}
    return calls == results


@settings(max_examples=200, deadline=None)
@given(st.lists(ROLES, max_size=20), st.lists(st.integers(0, 200), min_size=20, max_size=20), st.integers(10, 2000))
def test_trim_keeps_the_invariants(kinds: list[str], sizes: list[int], budget: int) -> None:
    messages = _conversation(kinds, sizes)
    total = sum(message_tokens(m, COUNT) for m in messages)
    try:
        result = trim(messages, budget, COUNT)
    except ContextOverflow as exc:
        assert exc.needed > budget
        return
    assert result.tokens <= budget
    assert sum(message_tokens(m, COUNT) for m in result.messages) == result.tokens
    assert [m for m in messages if m["role"] == "system"] == [m for m in result.messages if m["role"] == "system"]
    assert result.messages[-1] == messages[-1]
    assert _pairs_intact(result.messages)
    kept_in_order = [m for m in messages if any(m is k for k in result.messages)]
    assert kept_in_order == list(result.messages)
    if total <= budget:
        assert result.messages == tuple(messages) and result.dropped_messages == 0


def test_trim_drops_oldest_first_and_says_how_much() -> None:
    messages = [{"role": "system", "content": "s"}] + [{"role": r, "content": f"{i} " + "w " * 50} for i, r in enumerate(["user", "assistant"] * 3)]
    messages.append({"role": "user", "content": "now"})
    result = trim(messages, 120, COUNT)
    assert result.messages[0]["role"] == "system"
    assert result.messages[1]["content"].startswith(str(6 - (len(result.messages) - 2)))  # the newest turns survive
    assert result.dropped_tokens == sum(message_tokens(m, COUNT) for m in messages) - result.tokens


def test_trim_refuses_what_cannot_fit() -> None:
    with pytest.raises(ContextOverflow, match="budget is 10"):
        trim([{"role": "user", "content": "w " * 100}], 10, COUNT)


# --- PII ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("entity", "text"), [
    ("EMAIL", "jane.doe+tag@example.co.uk"),
    ("PHONE", "+1 415-555-0132"),
    ("PHONE", "(212) 555-7890"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "5500-0000-0000-0004"),
    ("IBAN", "DE89 3704 0044 0532 0130 00"),
    ("IBAN", "GB82WEST12345698765432"),
    ("SSN", "123-45-6789"),
    ("IP_ADDRESS", "10.0.0.254"),
    ("IP_ADDRESS", "2001:db8::8a2e:370:7334"),
])
def test_each_entity_is_found(entity: str, text: str) -> None:
    found = pii.find(f"please use {text} for this.")
    assert [(f.entity, f.text) for f in found] == [(entity, text)]


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # fails Luhn
    "DE89 3704 0044 0532 0130 01",  # fails mod 97
    "666-45-6789",  # never issued
    "300.1.2.3",  # not an address
    "the year 2024 and version 3.14",
])
def test_invalid_numbers_are_not_entities(text: str) -> None:
    assert pii.find(f"here: {text}.") == []


def test_reversible_redaction_round_trips() -> None:
    text = "Write to a@b.io and a@b.io, or c@d.io"
    redaction = pii.Redaction({})
    redacted = pii.redact(text, pii.find(text), redaction)
    assert redacted == "Write to [EMAIL_1] and [EMAIL_1], or [EMAIL_2]"
    assert redaction.restore(redacted) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=40))
def test_streamed_restore_matches_whole_restore(cuts: list[int]) -> None:
    redaction = pii.Redaction({"[EMAIL_1]": "jane@example.org", "[PHONE_1]": "+1 415-555-0132"})
    answer = "Sure [EMAIL_1], I will call [PHONE_1] [soon] and write to [EMAIL_1]."
    restorer, out, i = pii.StreamRestorer(redaction), [], 0
    for cut in cuts:
        out.append(restorer.feed(answer[i:i + cut]))
        i += cut
    out.append(restorer.feed(answer[i:]))
    out.append(restorer.flush())
    assert "".join(out) == redaction.restore(answer)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=40))
def test_streamed_scan_matches_whole_scan(cuts: list[int]) -> None:
    answer = "Contact jane@example.org or +1 415-555-0132; card 4111 1111 1111 1111 and ip 10.0.0.1 today."
    scanner, out, i = pii.StreamScanner(None, hold=64), [], 0
    for cut in cuts:
        out.append(scanner.feed(answer[i:i + cut]))
        i += cut
    out.append(scanner.feed(answer[i:]))
    out.append(scanner.flush())
    assert "".join(out) == pii.redact(answer, pii.find(answer), None)
