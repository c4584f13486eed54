"""llama.cpp's own server as modelyard's local engine: batching, cancel, crashes, tools.

Real SmolLM2 and Qwen2.5-Coder in real engine processes; nothing is faked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from modelyard.backends.base import BackendContext
from modelyard.backends.llamacpp_server import LlamaServerBackend, deferred_slot
from modelyard.backends.registry import backend_factory
from modelyard.config import parse_config
from modelyard.errors import InvalidRequest, UpstreamError
from modelyard.fleet.supervisor import ProcessState
from modelyard.protocol import Chunk, ModelCall, Sampling

MODELS_DIR = Path("~/.cache/modelyard/models").expanduser()
PROMPTS = ("Count: one, two,", "The colours of the rainbow are", "Write a haiku about rain.", "List three fruits:")


def engine(model: str = "smollm2-135m", builtin: str = "builtin:smollm2-135m", **options: object) -> LlamaServerBackend:
    deployment = {"backend": "llamacpp_server", "model_file": builtin, "n_ctx": 1024, "parallel": 4} | options
    config = parse_config({"models": {model: {"kind": "chat", "deployments": [deployment]}}})
    m = config.models[0]
    backend = backend_factory("llamacpp_server")(m.deployments[0], m, BackendContext(models_dir=MODELS_DIR, threads_per_worker=2))
    assert isinstance(backend, LlamaServerBackend)
    return backend


@pytest.fixture
async def smollm() -> AsyncIterator[LlamaServerBackend]:
    backend = engine()
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()


def call(prompt: str, max_tokens: int = 24, **kw: object) -> ModelCall:
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0, seed=1)
    return ModelCall(kind="chat", model="m", sampling=sampling, messages=({"role": "user", "content": prompt},), **kw)  # type: ignore[arg-type]


async def text_of(backend: LlamaServerBackend, c: ModelCall) -> tuple[str, list[Chunk]]:
    chunks = [chunk async for chunk in backend.generate(c)]
    return "".join(ch.text for ch in chunks), chunks


async def slots_processing(backend: LlamaServerBackend) -> int:
    assert backend.process is not None
    async with httpx.AsyncClient() as client:
        slots = (await client.get(backend.process.ready_info["base_url"] + "/slots")).json()
    return sum(1 for s in slots if s.get("is_processing"))


async def test_temperature_zero_output_mostly_survives_batching(smollm: LlamaServerBackend) -> None:
    prompts = PROMPTS + ("What is 2+2?", "Name a famous painter.", "Translate 'cat' to French.", "Give a synonym for happy.")
    alone = [(await text_of(smollm, call(p)))[0] for p in prompts]
    again = [(await text_of(smollm, call(p)))[0] for p in prompts]
    assert again == alone  # one sequence at a time is deterministic
    batched = [t for t, _ in await asyncio.gather(*(text_of(smollm, call(p)) for p in prompts[:4]))]
    batched += [t for t, _ in await asyncio.gather(*(text_of(smollm, call(p)) for p in prompts[4:]))]
    # Batched kernels sum in another order, so where two tokens nearly tie the
    # pick may flip and the texts part from there. Measured here: 5 of these 8
    # identical in a batch of 4; the test asks for half.
    same = sum(a == b for a, b in zip(alone, batched, strict=True))
    assert same >= len(prompts) // 2, (alone, batched)
    assert all(t.strip() for t in batched)


async def test_json_schema_holds_for_every_sequence_of_a_mixed_batch(smollm: LlamaServerBackend) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    constrained = call("Describe a person as JSON.", max_tokens=80, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    results = await asyncio.gather(
        text_of(smollm, constrained), text_of(smollm, call(PROMPTS[0])), text_of(smollm, constrained), text_of(smollm, call(PROMPTS[1]))
    )
    for text, chunks in (results[0], results[2]):
        assert chunks[-1].finish_reason == "stop", text
        data = json.loads(text)
        assert isinstance(data["name"], str) and isinstance(data["age"], int)


async def test_cancelling_one_stream_stops_it_and_leaves_the_others_intact(smollm: LlamaServerBackend) -> None:
    others = [asyncio.create_task(text_of(smollm, call(p, max_tokens=40))) for p in PROMPTS[:2]]
    abandoned = smollm.generate(call(PROMPTS[2], max_tokens=2000))
    first = await abandoned.__anext__()
    assert first.finish_reason is None
    await abandoned.aclose()  # what a client disconnect does
    for task in others:
        _, chunks = await task
        usage = chunks[-1].usage
        assert chunks[-1].finish_reason in ("stop", "length") and usage is not None and usage.completion_tokens > 0
    # The engine stopped the abandoned sequence instead of decoding its 2000 tokens.
    for _ in range(100):
        if await slots_processing(smollm) == 0:
            break
        await asyncio.sleep(0.05)
    assert await slots_processing(smollm) == 0
    assert smollm.in_flight == 0


async def test_killed_engine_fails_its_requests_with_502_and_comes_back(smollm: LlamaServerBackend) -> None:
    assert smollm.process is not None and smollm.process.pid is not None
    stream = smollm.generate(call(PROMPTS[0], max_tokens=2000))
    await stream.__anext__()
    os.kill(smollm.process.pid, signal.SIGKILL)
    with pytest.raises(UpstreamError) as info:
        async for _ in stream:
            pass
    assert info.value.status == 502
    while smollm.process.restarts < 1 or smollm.process.state != ProcessState.READY:
        await smollm.process.wait_state_change()
    assert smollm.process.restarts == 1
    text, _ = await text_of(smollm, call(PROMPTS[1], max_tokens=4))
    assert text.strip()


async def test_a_long_shared_prefix_is_served_from_the_cache(smollm: LlamaServerBackend) -> None:
    history = " ".join(f"Fact {i}: the value of item {i} is {i * 7}." for i in range(60))
    first = call(history + " What is the value of item 3?", max_tokens=4)
    second = call(history + " What is the value of item 9?", max_tokens=4)
    _, a = await text_of(smollm, first)
    _, b = await text_of(smollm, second)
    assert smollm.process is not None
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(smollm.process.ready_info["base_url"] + "/metrics")).text
    cached = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("llamacpp:prompt_tokens_cached_total"))
    assert a[-1].usage is not None and b[-1].usage is not None
    assert cached >= 0.8 * a[-1].usage.prompt_tokens  # the second request re-read only its last words


async def test_tools_are_refused_on_a_template_without_them(smollm: LlamaServerBackend) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(InvalidRequest):
        await text_of(smollm, call("hi", tools=(tool,)))


async def test_qwen_answers_a_required_tool_call_as_a_parsed_call() -> None:
    backend = engine("qwen2.5-0.5b", "builtin:qwen2.5-coder-0.5b", tools=True, parallel=1)
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }
    await backend.start()
    try:
        _, chunks = await text_of(backend, call("What is the weather in Paris?", max_tokens=60, tools=(tool,), tool_choice="required"))
    finally:
        await backend.aclose()
    calls = [c for chunk in chunks for c in chunk.tool_calls]
    assert chunks[-1].finish_reason == "tool_calls"
    assert calls[0]["function"]["name"] == "get_weather"
    assert isinstance(json.loads(calls[0]["function"]["arguments"])["city"], str)


async def test_a_niced_engine_runs_at_lower_cpu_priority() -> None:
    backend = engine(parallel=1, nice=7)
    await backend.start()
    try:
        assert backend.process is not None and backend.process.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, backend.process.pid) - os.getpriority(os.PRIO_PROCESS, 0) == 7
        text, _ = await text_of(backend, call("Say hi.", max_tokens=4))
        assert text
    finally:
        await backend.aclose()
    with pytest.raises(Exception, match="nice"):
        engine(nice=25)


async def test_a_per_slot_kv_cache_holds_one_request_to_its_slot() -> None:
    # About 600 prompt tokens: more than one slot of 256, less than the shared cache of (3 + 1 spare) x 256.
    long_prompt = call("word " * 600, max_tokens=4)
    shared = engine(parallel=3, n_ctx=256)
    await shared.start()
    try:
        _, chunks = await text_of(shared, long_prompt)  # a long request may use what the idle slots leave free
        assert chunks[-1].finish_reason is not None
    finally:
        await shared.aclose()
    per_slot = engine(parallel=3, n_ctx=256, kv_cache="per_slot")
    assert per_slot.request_tokens() == 256 and shared.request_tokens() == 4 * 256
    await per_slot.start()
    try:
        with pytest.raises(InvalidRequest) as info:
            await text_of(per_slot, long_prompt)
        assert info.value.code == "context_length_exceeded"
        short, _ = await text_of(per_slot, call("Say hi.", max_tokens=4))
        assert short
    finally:
        await per_slot.aclose()
    with pytest.raises(Exception, match="kv_cache"):
        engine(kv_cache="paged")


async def test_a_bad_model_file_fails_start_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    backend = engine(builtin=str(bad), start_timeout_s=60.0)
    with pytest.raises(Exception) as info:
        await backend.start()
    await backend.aclose()
    assert "did not become ready" in str(info.value)


async def test_ignore_eos_generates_exactly_max_tokens(smollm: LlamaServerBackend) -> None:
    short = call("Reply with the single word: yes", max_tokens=64)
    _, chunks = await text_of(smollm, short)
    natural = next(c.usage for c in chunks if c.usage is not None)
    assert natural.completion_tokens < 64  # the model stops by itself ...
    forced = ModelCall(kind="chat", model="m", sampling=Sampling(max_tokens=64, temperature=0.0, seed=1, ignore_eos=True), messages=short.messages)
    _, chunks = await text_of(smollm, forced)
    assert next(c.usage for c in chunks if c.usage is not None).completion_tokens == 64  # ... unless told to run to max_tokens


def test_deferrable_work_takes_the_highest_idle_slot_not_yet_promised() -> None:
    slots: list[dict[str, object]] = [{"id": i, "is_processing": i in (1, 4)} for i in range(5)]
    assert deferred_slot(slots, set()) == 3  # 4 is busy
    assert deferred_slot(slots, {3}) == 2  # 3 is promised to a request the engine has not started
    assert deferred_slot(slots, {0, 2, 3}) is None and deferred_slot([], set()) is None  # none idle: the engine chooses


async def test_deferrable_requests_run_in_the_top_slots_and_urgent_ones_below(smollm: LlamaServerBackend) -> None:
    """Batch work pinned to the highest idle slots leaves the low slots, whose prompts llama.cpp reads first, to the rest."""
    assert smollm.process is not None
    base = str(smollm.process.ready_info["base_url"])
    url = base + "/slots"
    engine_slots = smollm.server_options.parallel + 1
    async with httpx.AsyncClient(timeout=60) as http:
        for i in range(engine_slots):  # use every slot once, lowest first: left to itself, the engine now picks the low (least recent) ones
            body = {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 2, "id_slot": i}
            assert (await http.post(base + "/v1/chat/completions", json=body)).status_code == 200
    batch = [asyncio.create_task(text_of(smollm, call(f"{p} Go on for a long time.", max_tokens=160, deferrable=True))) for p in PROMPTS[:2]]
    async with httpx.AsyncClient() as http:
        busy: list[int] = []
        for _ in range(400):  # until both batch sequences run (polling the engine's own view, not sleeping a fixed time)
            busy = sorted(s["id"] for s in (await http.get(url)).json() if s["is_processing"])
            if len(busy) == 2:
                break
            await asyncio.sleep(0.025)
        assert busy == [engine_slots - 2, engine_slots - 1]
        urgent = asyncio.create_task(text_of(smollm, call("Say hi.", max_tokens=8)))
        while not urgent.done():
            now = sorted(s["id"] for s in (await http.get(url)).json() if s["is_processing"])
            assert all(i in busy or i < engine_slots - 2 for i in now)  # the urgent one is below the batch slots
            await asyncio.sleep(0.02)
    assert (await urgent)[0]
    for task in batch:
        task.cancel()
    await asyncio.gather(*batch, return_exceptions=True)
