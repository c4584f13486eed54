"""Deferrable work yields the engine to urgent requests: the gate and the resumed call, with no engine."""

from __future__ import annotations

import asyncio

from modelyard.backends.preemption import YieldGate, continuation, preemptible
from modelyard.protocol import ModelCall, Sampling


def chat(**kw: object) -> ModelCall:
    fields: dict[str, object] = {"sampling": Sampling(max_tokens=100), "deferrable": True} | kw
    return ModelCall(kind="chat", model="m", messages=({"role": "user", "content": "Tell a story."},), **fields)  # type: ignore[arg-type]


async def test_an_urgent_request_tells_every_listening_stream_to_yield_until_it_is_answered() -> None:
    gate = YieldGate()
    first, second = gate.listen(), gate.listen()
    assert not first.done() and not second.done()
    gate.urgent_started()
    gate.urgent_started()
    assert first.done() and second.done()
    late = gate.listen()
    assert late.done()  # a stream starting while an urgent request waits yields at once
    clear = asyncio.create_task(gate.wait_clear())
    gate.urgent_answered()
    await asyncio.sleep(0)
    assert not clear.done() and gate.urgent_waiting == 1  # one still waits for its first token
    gate.urgent_answered()
    await asyncio.wait_for(clear, 1)
    gate.urgent_answered()  # an extra answer does not go negative
    assert gate.urgent_waiting == 0
    fresh = gate.listen()
    assert not fresh.done()
    for listener in (first, second, late, fresh):
        gate.forget(listener)
    gate.urgent_started()
    assert not fresh.done()  # forgotten listeners are not told


def test_a_chat_call_resumes_as_a_started_assistant_message_with_fewer_tokens_left() -> None:
    call = chat()
    resumed = continuation(call, "Once upon", 2)
    assert resumed.messages[:-1] == call.messages
    assert resumed.messages[-1] == {"role": "assistant", "content": "Once upon"}
    assert resumed.sampling.max_tokens == 98
    assert continuation(chat(sampling=Sampling()), "x", 5).sampling.max_tokens is None
    assert continuation(call, "", 0) == call


def test_a_completion_call_resumes_with_its_text_appended_to_the_prompt() -> None:
    call = ModelCall(kind="completion", model="m", sampling=Sampling(max_tokens=10), prompt="The sky is", deferrable=True)
    resumed = continuation(call, " blue and", 3)
    assert resumed.prompt == "The sky is blue and" and resumed.sampling.max_tokens == 7


def test_only_plain_deferrable_calls_are_preempted() -> None:
    assert preemptible(chat())
    assert not preemptible(chat(deferrable=False))
    assert not preemptible(chat(response_format={"type": "json_object"}))
    assert not preemptible(chat(tools=({"type": "function", "function": {"name": "f"}},)))
    assert not preemptible(chat(sampling=Sampling(seed=3)))
