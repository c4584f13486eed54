"""The loop guard: detection on hand-built conversations, and the stage's three actions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from modelyard.config import parse_config
from modelyard.config.reader import Reader
from modelyard.errors import InvalidRequest
from modelyard.pipeline.loop_guard import LoopGuardFactory
from modelyard.pipeline.slots import StageEnvironment
from modelyard.pipeline.types import Request, Response
from modelyard.protocol import ModelCall
from modelyard.shaping.loops import LoopPolicy, find_loop


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": f"c-{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def step(name: str, result: str = "ok", **arguments: Any) -> list[dict[str, Any]]:
    """One agent step: the model's call and the tool's result."""
    made = call(name, **arguments)
    made["id"] = f"c-{name}-{abs(hash((name, result, json.dumps(arguments, sort_keys=True))))}-{result}"
    return [{"role": "assistant", "content": None, "tool_calls": [made]}, {"role": "tool", "tool_call_id": made["id"], "content": result}]


def conversation(*steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "do the task"}, *[m for s in steps for m in s]]


def test_identical_calls_are_a_loop_at_the_threshold_not_before() -> None:
    policy = LoopPolicy(max_identical=3)
    two = conversation(step("search", q="x"), step("search", q="x"))
    assert find_loop(two, policy) is None
    loop = find_loop(conversation(step("search", q="x"), step("search", q="x"), step("search", q="x")), policy)
    assert loop is not None and loop.describe() == "identical call to search x3"


def test_argument_order_and_spacing_do_not_hide_a_repeat() -> None:
    same = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": text}}]} for text in ('{"a": 1, "b": 2}', '{"b":2,"a":1}', '{ "a" : 1, "b" : 2 }')]
    assert find_loop([{"role": "user", "content": "go"}, *same], LoopPolicy()) is not None


def test_cycles_are_found_and_distinct_work_is_not() -> None:
    policy = LoopPolicy(max_identical=5, cycle_repeats=2)
    assert find_loop(conversation(step("open", f=1), step("close", f=1), step("open", f=1), step("close", f=1)), policy).kind == "cycle"  # type: ignore[union-attr]
    abc = [step("a"), step("b"), step("c")] * 2
    assert find_loop(conversation(*abc), policy).describe() == "cycle a -> b -> c x2"  # type: ignore[union-attr]
    distinct = conversation(*[step("read", path=f"file{i}.py") for i in range(12)])
    assert find_loop(distinct, policy) is None


def test_the_same_call_with_new_results_is_progress() -> None:
    tests_again = conversation(step("run_tests", "2 failed"), step("edit", path="a"), step("run_tests", "1 failed"), step("edit", path="b"),
                               step("run_tests", "all passed"))
    assert find_loop(tests_again, LoopPolicy(max_identical=3)) is None
    same_failure = conversation(step("run_tests", "2 failed"), step("edit", path="a"), step("run_tests", "2 failed"), step("edit", path="b"),
                                step("run_tests", "2 failed"))
    assert find_loop(same_failure, LoopPolicy(max_identical=3)) is None  # a new edit between runs is progress
    stuck = conversation(step("run_tests", "2 failed"), step("run_tests", "2 failed"), step("run_tests", "2 failed"))
    assert find_loop(stuck, LoopPolicy(max_identical=3)) is not None


def test_only_the_current_turn_counts() -> None:
    earlier = conversation(step("search", q="x"), step("search", q="x"))
    again = [*earlier, {"role": "assistant", "content": "done"}, {"role": "user", "content": "once more"}, *step("search", q="x")]
    assert find_loop(again, LoopPolicy(max_identical=3)) is None


def run_stage(action: str, messages: list[dict[str, Any]]) -> tuple[Request, list[Request]]:
    config = parse_config({"models": {"m": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}}})
    stage = LoopGuardFactory().build(Reader("test", "o", {"action": action}), StageEnvironment(config, None))
    seen: list[Request] = []

    async def upstream(request: Request) -> Response:
        seen.append(request)
        return Response(model="m", deployment="m/0", route_reason="")

    request = Request("chat", "m", "r", call=ModelCall(kind="chat", model="m", messages=tuple(messages)))
    asyncio.run(stage(upstream)(request))
    return request, seen


LOOPING = conversation(step("search", q="x"), step("search", q="x"), step("search", q="x"))


def test_warn_passes_with_a_header() -> None:
    request, seen = run_stage("warn", LOOPING)
    assert seen and request.response_headers["x-modelyard-loop"] == "identical call to search x3"
    assert seen[0].call.messages == tuple(LOOPING)  # type: ignore[union-attr]


def test_instruct_tells_the_model_to_stop() -> None:
    _, seen = run_stage("instruct", LOOPING)
    last = seen[0].call.messages[-1]  # type: ignore[union-attr]
    assert last["role"] == "system" and "Do not call any tool again" in last["content"]


def test_block_refuses_the_step() -> None:
    with pytest.raises(InvalidRequest, match="agent loop detected .identical call to search x3.") as info:
        run_stage("block", LOOPING)
    assert info.value.code == "loop_detected"
    _, seen = run_stage("block", conversation(step("search", q="x"), step("search", q="y")))
    assert seen  # no loop: passes
