"""Embedding batching (merge and split under concurrency) and agent session affinity."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpx
import pytest

from modelyard.config import BatchingPolicy
from modelyard.pipeline.batcher import EmbeddingBatcher
from modelyard.protocol import Embeddings
from modelyard.scheduling.packing import take_count

from .conftest import LiveServer, start_modelyard, write_config


def test_packing_respects_size_and_tokens() -> None:
    assert take_count([["a"], ["b"], ["c"]], max_batch_size=2, max_batch_tokens=100) == 2
    assert take_count([["x" * 400], ["y" * 400]], max_batch_size=10, max_batch_tokens=150) == 1
    assert take_count([["x" * 4000]], max_batch_size=1, max_batch_tokens=10) == 1  # always at least one
    assert take_count([], 4, 4) == 0


async def test_batcher_merges_concurrent_requests_and_splits_results() -> None:
    calls: list[list[str]] = []

    async def embed(texts: list[str]) -> Embeddings:
        calls.append(list(texts))
        await asyncio.sleep(0.01)
        return Embeddings([[float(len(t)), float(i)] for i, t in enumerate(texts)], sum(len(t) for t in texts), [len(t) for t in texts])

    batcher = EmbeddingBatcher(embed, BatchingPolicy(max_wait_ms=20, max_batch_size=8, max_batch_tokens=10_000))
    inputs = [[f"text-{i}" * (i + 1)] if i % 3 else [f"a{i}", f"bb{i}"] for i in range(20)]
    results = await asyncio.gather(*(batcher.submit(texts) for texts in inputs))
    await batcher.aclose()
    for texts, result in zip(inputs, results, strict=True):
        assert [v[0] for v in result.vectors] == [float(len(t)) for t in texts]  # each caller got its own vectors
        assert result.prompt_tokens == sum(len(t) for t in texts) and result.token_counts == [len(t) for t in texts]
    assert len(calls) < len(inputs)  # merged
    assert all(len(c) <= 8 or len(c) == 2 for c in calls)
    assert sum(len(c) for c in calls) == sum(len(t) for t in inputs)


async def test_batcher_failure_reaches_every_caller() -> None:
    async def embed(texts: list[str]) -> Embeddings:
        raise RuntimeError("boom")

    batcher = EmbeddingBatcher(embed, BatchingPolicy(max_wait_ms=10))
    results = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]), return_exceptions=True)
    await batcher.aclose()
    assert all(isinstance(r, RuntimeError) for r in results)


AFFINITY = """
models:
  twin:
    kind: chat
    deployments:
      - {{name: one, backend: openai, base_url: '{url}/v1', headers: {{x-fake-token-interval-ms: '50'}}}}
      - {{name: two, backend: openai, base_url: '{url}/v1', headers: {{x-fake-token-interval-ms: '50'}}}}
"""
# session_affinity_slack's default: a session stays while its deployment has at most this many more in flight than the least loaded.
SLACK = 2


@pytest.fixture(scope="module")
def twin_server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("affinity")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", AFFINITY.format(url=fake_upstream.url)))
    yield live
    live.stop()


def test_sessions_stick_to_one_deployment(twin_server: LiveServer) -> None:
    body = {"model": "twin", "messages": [{"role": "user", "content": "step"}], "max_tokens": 2}
    seen: dict[str, set[str]] = {}
    for _ in range(6):
        for session in ("agent-a", "agent-b", "agent-c", "agent-d"):
            reply = httpx.post(twin_server.url + "/v1/chat/completions", json=body, headers={"x-modelyard-session": session}, timeout=10)
            assert reply.status_code == 200
            seen.setdefault(session, set()).add(reply.headers["x-modelyard-deployment"])
    assert all(len(deployments) == 1 for deployments in seen.values())
    assert {d for s in seen.values() for d in s} == {"twin/one", "twin/two"}  # sessions spread over both
    logged = twin_server.access_lines(lambda entry: entry["session"] == "agent-a" and entry["path"] == "/v1/chat/completions", at_least=6)
    assert len(logged) == 6 and all(entry["session"] == "agent-a" and entry["workload"] == "agent" for entry in logged)


def test_a_session_stays_on_its_loaded_deployment_within_the_slack(twin_server: LiveServer) -> None:
    """Only affinity explains the result: the session's deployment is busier, so least-outstanding alone would pick the other."""
    url, session = twin_server.url + "/v1/chat/completions", {"x-modelyard-session": "agent-loaded"}
    probe = {"model": "twin", "messages": [{"role": "user", "content": "step"}], "max_tokens": 2}
    hold = probe | {"max_tokens": 400, "stream": True}  # 400 tokens at 50 ms: open for 20 s unless closed
    with httpx.Client(timeout=30) as http, contextlib.ExitStack() as holders:
        home = http.post(url, json=probe, headers=session).headers["x-modelyard-deployment"]
        other = ({"twin/one", "twin/two"} - {home}).pop()

        readers: list[Iterator[bytes]] = []  # kept referenced: a collected iterator would close its stream

        def hold_one() -> str:
            response = holders.enter_context(http.stream("POST", url, json=hold, headers=session))
            readers.append(response.iter_raw())
            next(readers[-1])  # the first chunk has arrived: the request is in flight on its deployment
            return response.headers["x-modelyard-deployment"]

        for in_flight in range(1, SLACK + 1):
            assert hold_one() == home
            assert http.post(url, json=probe).headers["x-modelyard-deployment"] == other  # no session: the least loaded
            assert http.post(url, json=probe, headers=session).headers["x-modelyard-deployment"] == home, f"left at {in_flight} in flight"
        assert hold_one() == home  # SLACK in flight, still within the slack
        # Now SLACK + 1 more than the other: the session moves, and stays where it moved.
        assert http.post(url, json=probe, headers=session).headers["x-modelyard-deployment"] == other
        assert http.post(url, json=probe, headers=session).headers["x-modelyard-deployment"] == other


def test_user_field_is_a_session_too(twin_server: LiveServer) -> None:
    body = {"model": "twin", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "user": "end-user-7"}
    deployments = {httpx.post(twin_server.url + "/v1/chat/completions", json=body, timeout=10).headers["x-modelyard-deployment"] for _ in range(5)}
    assert len(deployments) == 1
