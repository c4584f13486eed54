"""Operations over real processes: worker restarts, cancellation, overload, shutdown, upstream failures."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import LiveServer, start_modelyard, wait_until, write_config

MIXED = """
server:
  grace_period_s: 20
models:
  fake-chat:
    kind: chat
    deployments:
      - backend: openai
        base_url: {url}/v1
        upstream_model: fake
  fake-slow:
    kind: chat
    deployments:
      - backend: openai
        base_url: {url}/v1
        headers: {{x-fake-latency-ms: "3000"}}
        timeouts: {{first_token_s: 0.5}}
  fake-broken:
    kind: chat
    deployments:
      - backend: openai
        base_url: {url}/v1
        headers: {{x-fake-status: "500"}}
  fake-midstream:
    kind: chat
    deployments:
      - backend: openai
        base_url: {url}/v1
        headers: {{x-fake-fail-after: "3"}}
  fake-paced:
    kind: chat
    deployments:
      - backend: openai
        base_url: {url}/v1
        headers: {{x-fake-token-interval-ms: "100"}}
  smollm2-135m:
    kind: chat
    deployments:
      - backend: llamacpp_server
        model_file: builtin:smollm2-135m
        parallel: 1
        max_queue: 0
        n_ctx: 1024
"""


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("mixed")
    server = start_modelyard(tmp, write_config(tmp / "fleet.yaml", MIXED.format(url=fake_upstream.url)))
    yield server
    server.stop()


def worker_pids(server: LiveServer, deployment: str) -> list[int]:
    fleet = httpx.get(server.url + "/admin/fleet").json()
    entry = next(d for d in fleet["deployments"] if d["deployment"] == deployment)
    return [w["pid"] for w in entry["workers"] if w["state"] == "ready"]


def outstanding(server: LiveServer, deployment: str) -> int:
    fleet = httpx.get(server.url + "/admin/fleet").json()
    return int(next(d for d in fleet["deployments"] if d["deployment"] == deployment)["outstanding"])


class BackgroundStream:
    """A streaming request on a thread; ``first_token`` is set when the first content arrives."""

    def __init__(self, server: LiveServer, body: dict[str, object]) -> None:
        self.lines: list[str] = []
        self.status = 0
        self.first_token = threading.Event()
        self.thread = threading.Thread(target=self._consume, args=(server, body))
        self.thread.start()
        if not self.first_token.wait(60):
            raise AssertionError("the stream sent no token within 60 s")

    def _consume(self, server: LiveServer, body: dict[str, object]) -> None:
        try:
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
                    if '"content"' in line:
                        self.first_token.set()
        finally:
            self.first_token.set()  # never leave the waiter hanging; it checks the lines

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"


def chat(server: LiveServer, model: str, max_tokens: int = 4, stream: bool = False, timeout: float = 60) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}], "max_tokens": max_tokens, "stream": stream}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=timeout)


def test_openai_backend_passthrough(mixed_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=mixed_server.url + "/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi there"}], max_tokens=5)
    assert completion.choices[0].message.content == "alpha bravo charlie delta echo"
    assert completion.usage is not None and completion.usage.completion_tokens == 5 and completion.usage.prompt_tokens == 2
    chunks = list(client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "alpha bravo charlie"


def test_streaming_chunks_are_relayed_as_they_arrive(mixed_server: LiveServer) -> None:
    body = {"model": "fake-paced", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": True}
    arrivals = []
    started = time.monotonic()
    with httpx.stream("POST", mixed_server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[1] > 0.25  # paced upstream: chunks were not buffered into one


def test_upstream_failure_is_502_and_timeout_is_504(mixed_server: LiveServer) -> None:
    broken = chat(mixed_server, "fake-broken")
    assert broken.status_code == 502 and broken.json()["error"]["type"] == "upstream_error"
    slow = chat(mixed_server, "fake-slow")
    assert slow.status_code == 504 and slow.json()["error"]["type"] == "timeout_error"


def test_midstream_failure_ends_with_error_event_not_done(mixed_server: LiveServer) -> None:
    with httpx.stream("POST", mixed_server.url + "/v1/chat/completions", json={"model": "fake-midstream", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10, "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert "[DONE]" not in lines[-1]
    assert json.loads(lines[-1][len("data: "):])["error"]["type"] == "upstream_error"
    contents = [line for line in lines if '"content"' in line and '"delta"' in line]
    assert contents  # tokens reached the client before the failure (a reset may drop the last ones in flight)


def test_overload_is_429_with_retry_after(mixed_server: LiveServer) -> None:
    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(chat(mixed_server, "smollm2-135m", max_tokens=150)))
    first.start()
    wait_until(lambda: outstanding(mixed_server, "smollm2-135m/0") == 1, "the one worker is busy (the queue holds 0)")
    second = chat(mixed_server, "smollm2-135m", max_tokens=2)
    first.join()
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert results[0].status_code == 200


def test_client_disconnect_frees_the_worker(mixed_server: LiveServer) -> None:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 900, "stream": True}
    with httpx.stream("POST", mixed_server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"content"' in line:
                break  # got a token; hang up mid-generation
    started = time.monotonic()
    deadline = started + 10
    while time.monotonic() < deadline:
        reply = chat(mixed_server, "smollm2-135m", max_tokens=2)
        if reply.status_code == 200:
            break
        time.sleep(0.2)
    assert reply.status_code == 200
    assert time.monotonic() - started < 5  # 900 tokens would take far longer


def test_killed_worker_is_restarted(mixed_server: LiveServer) -> None:
    [pid] = worker_pids(mixed_server, "smollm2-135m/0")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    new: list[int] = []
    while time.monotonic() < deadline:
        new = worker_pids(mixed_server, "smollm2-135m/0")
        if new and new != [pid]:
            break
        time.sleep(0.3)
    assert new and new != [pid]
    assert chat(mixed_server, "smollm2-135m", max_tokens=3).status_code == 200
    fleet = httpx.get(mixed_server.url + "/admin/fleet").json()
    worker = next(d for d in fleet["deployments"] if d["deployment"] == "smollm2-135m/0")["workers"][0]
    assert worker["restarts"] >= 1


def test_worker_killed_mid_request_is_a_clean_error_not_a_hang(mixed_server: LiveServer) -> None:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}], "max_tokens": 400, "stream": True}
    stream = BackgroundStream(mixed_server, body)  # returns once tokens are flowing
    for pid in worker_pids(mixed_server, "smollm2-135m/0"):
        os.kill(pid, signal.SIGKILL)
    stream.join(30)
    assert stream.status == 200  # tokens were flowing: the stream ends with an error event
    assert "died" in json.loads(stream.lines[-1][len("data: "):])["error"]["message"]


def test_sigterm_finishes_inflight_and_leaves_no_orphans(tmp_path: Path, fake_upstream: LiveServer) -> None:
    server = start_modelyard(tmp_path, write_config(tmp_path / "fleet.yaml", MIXED.format(url=fake_upstream.url)))
    pids = worker_pids(server, "smollm2-135m/0")
    body = {"model": "fake-paced", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": True}
    stream = BackgroundStream(server, body)  # under way: 20 tokens at 100 ms
    assert server.stop(signal.SIGTERM) == 0
    stream.join(10)
    assert stream.lines[-1] == "data: [DONE]"  # the in-flight stream was allowed to finish
    assert sum('"content"' in line for line in stream.lines) >= 20
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
