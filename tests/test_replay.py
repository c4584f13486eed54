"""Traces (pure parsing and scaling) and ``modelyard replay`` against a real fake upstream over HTTP."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.backends.base import BackendContext
from modelyard.backends.registry import backend_factory
from modelyard.config import parse_config
from modelyard.planning.profile import batch_sizes, fit_line, profile_backend
from modelyard.planning.replay import Outcome, ReplayResult, percentile, summarize, synthesize_prompt
from modelyard.planning.traces import TraceError, TraceRequest, parse_trace, scale, to_jsonl, window
from modelyard.protocol import ModelCall

from .conftest import ROOT, LiveServer

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:45.1805900,10,2
"""
SHARED_TRACES = next((p for p in (ROOT.parent / "shared" / "data" / "traces", Path("/work/shared/data/traces")) if p.is_dir()), None)


def test_azure_csv_is_read_in_arrival_order_from_zero() -> None:
    rows = parse_trace(AZURE)
    assert [r.arrival_s for r in rows] == pytest.approx([0.0, 1.5, 5.814579])
    assert [(r.input_tokens, r.output_tokens) for r in rows] == [(10, 2), (374, 44), (396, 109)]


def test_mooncake_jsonl_keeps_prefix_blocks_and_roundtrips() -> None:
    text = '{"timestamp": 2000, "input_length": 900, "output_length": 5, "hash_ids": [1, 2]}\n{"timestamp": 500, "input_length": 600, "output_length": 7, "hash_ids": [1]}\n'
    rows = parse_trace(text)
    assert rows[0] == TraceRequest(0.0, 600, 7, (1,)) and rows[1] == TraceRequest(1.5, 900, 5, (1, 2))
    tagged = [TraceRequest(0.0, 3, 4, (), "acme", "batch", "m")]
    assert parse_trace(to_jsonl(rows + tagged)) == sorted(rows + tagged, key=lambda r: r.arrival_s)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "expected an Azure trace CSV"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nnot a time,1,2\n", ":2:"),
        ('{"timestamp": 1, "input_length": 3}\n', "missing field 'output_length'"),
        ('{"timestamp": 1, "input_length": -3, "output_length": 1}\n', "cannot be negative"),
        ('{"timestamp": 1, "input_length": 3, "output_length": 1, "hash_ids": ["x"]}\n', "hash_ids"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ],
)
def test_bad_traces_name_the_line_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_trace(text, source="t")


def test_window_and_scale() -> None:
    rows = [TraceRequest(float(t), 100, 10) for t in range(10)]
    picked = window(rows, start_s=2.0, duration_s=3.0)
    assert [r.arrival_s for r in picked] == [0.0, 1.0, 2.0]
    dense = scale(picked, time_scale=0.5, token_scale=0.05)
    assert [r.arrival_s for r in dense] == [0.0, 0.5, 1.0]
    assert {(r.input_tokens, r.output_tokens) for r in dense} == {(5, 1)}
    with pytest.raises(ValueError):
        scale(rows, time_scale=0)


@pytest.mark.skipif(SHARED_TRACES is None, reason="../shared/data/traces is not beside this checkout")
def test_the_shipped_traces_parse() -> None:
    assert SHARED_TRACES is not None
    conv = parse_trace((SHARED_TRACES / "azure_llm_2023_conv.csv").read_text())
    assert len(conv) == 19366 and 3400 < conv[-1].arrival_s < 3600


def test_shared_blocks_give_shared_prompt_prefixes() -> None:
    a = synthesize_prompt(TraceRequest(0, 60, 1, (7, 8)), index=1, block_tokens=10)
    b = synthesize_prompt(TraceRequest(0, 60, 1, (7, 9)), index=2, block_tokens=10)
    words_a, words_b = a.split(), b.split()
    assert words_a[:10] == words_b[:10] and words_a[10:20] != words_b[10:20]
    assert abs(len(words_a) - 60) <= 3


def test_summary_counts_refusals_and_uses_nearest_rank() -> None:
    result = ReplayResult([Outcome(0, 200, 0.1, 1.0, 10), Outcome(0, 429), Outcome(0, 200, 0.3, 2.0, 1), Outcome(0, 502, error="x")], wall_s=2.0)
    s = summarize(result)
    assert s["requests"] == 4 and s["completed"] == 2 and s["rejected_rate"] == 0.25 and s["error_rate"] == 0.25
    assert s["ttft_p50_ms"] == 100.0 and s["ttft_p99_ms"] == 300.0 and s["throughput_rps"] == 1.0
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([], 50) is None


def test_replay_sends_the_trace_and_reports(tmp_path: Path, fake_upstream: LiveServer) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(to_jsonl([TraceRequest(i * 0.05, 20, 4, workload="batch" if i % 2 else None) for i in range(20)]))
    before = int(httpx.get(fake_upstream.url + "/stats").json()["requests"])
    run = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "replay", "--trace", str(trace), "--base-url", fake_upstream.url + "/v1", "--model", "fake", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["requests"] == 20 and summary["completed"] == 20 and summary["rejected_rate"] == 0.0
    assert summary["ttft_p50_ms"] is not None and summary["e2e_p99_ms"] >= summary["ttft_p50_ms"]
    after = int(httpx.get(fake_upstream.url + "/stats").json()["requests"])
    assert after - before == 23  # three calibration probes, then the trace
    assert summary["words_per_token"] == pytest.approx(1.0, abs=0.1)  # the fake counts a word as a token


def test_replay_refuses_a_missing_trace_clearly(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "replay", "--trace", str(tmp_path / "none.csv"), "--base-url", "http://127.0.0.1:9/v1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 2 and "none.csv" in run.stderr and "Traceback" not in run.stderr


def test_line_fit_and_batch_sizes() -> None:
    assert fit_line([(0, 1.0), (10, 2.0), (20, 3.0)]) == pytest.approx((1.0, 0.1))
    assert fit_line([(5, 1.0), (5, 3.0)]) == (2.0, 0.0)
    assert batch_sizes(1) == [1] and batch_sizes(6) == [1, 2, 4, 6] and batch_sizes(8) == [1, 2, 4, 8]


async def test_profile_recovers_a_fake_engines_latency_and_token_interval(fake_upstream: LiveServer) -> None:
    config = parse_config({"models": {"fake": {"kind": "chat", "deployments": [{
        "backend": "openai", "base_url": fake_upstream.url + "/v1",
        "headers": {"x-fake-latency-ms": "80", "x-fake-token-interval-ms": "20", "x-fake-tokens": "12"},
    }]}}})
    model = config.models[0]
    backend = backend_factory("openai")(model.deployments[0], model, BackendContext(models_dir=Path(".")))
    await backend.start()
    try:
        profile = await profile_backend(backend, "fake", slots=2, repeats=2)
    finally:
        await backend.aclose()
    assert profile["prefill"]["fixed_s"] == pytest.approx(0.08, abs=0.03)
    assert abs(profile["prefill"]["per_token_s"]) < 0.001  # the fake's latency does not grow with the prompt
    assert set(profile["decode_interval_s"]) == {"1", "2"}
    assert profile["decode_interval_s"]["1"] == pytest.approx(0.02, abs=0.004)


class RecordingBackend:
    """Passes every call on to a real backend and keeps each prompt it sent."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prompts: list[str] = []

    def generate(self, call: ModelCall) -> Any:
        self.prompts.append(call.messages[-1]["content"])
        return self.inner.generate(call)


async def test_two_profiles_of_one_server_send_no_prompt_twice(fake_upstream: LiveServer) -> None:
    """A second profile of a running server must not find its prompts in the engine's prompt cache (it used to send the
    first one's again, and llama.cpp's cache made prefill look almost free)."""
    config = parse_config({"models": {"fake": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": fake_upstream.url + "/v1"}]}}})
    model = config.models[0]
    backend = backend_factory("openai")(model.deployments[0], model, BackendContext(models_dir=Path(".")))
    await backend.start()
    try:
        first, second = RecordingBackend(backend), RecordingBackend(backend)
        # Seeds whose word orders agree on their second and third words: a one-word prompt would repeat on its salt alone.
        await profile_backend(first, "fake", slots=2, repeats=1, rng=random.Random(0))  # type: ignore[arg-type]
        await profile_backend(second, "fake", slots=2, repeats=1, rng=random.Random(108))  # type: ignore[arg-type]
    finally:
        await backend.aclose()
    assert len(first.prompts) > 10 and len(set(first.prompts)) == len(first.prompts)
    assert not set(first.prompts) & set(second.prompts)


def test_profile_through_a_running_endpoint_starts_nothing_and_says_where_it_measured(tmp_path: Path, fake_upstream: LiveServer) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "profile", "--model", "smollm2-135m", "--base-url", fake_upstream.url + "/v1", "--out", str(tmp_path), "--repeats", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    profile = json.loads((tmp_path / "smollm2-135m__0.json").read_text())
    assert profile["through"] == fake_upstream.url + "/v1" and set(profile["decode_interval_s"]) == {"1", "2", "4"}
    assert "prompt_overhead_tokens" in profile and len(profile["prefill"]["points"]) == 5
