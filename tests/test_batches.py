"""The Batch API with the official SDK over real HTTP, and a job that survives SIGKILL."""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import LiveServer, start_modelyard, wait_until, write_config

FLEET = """
scheduling:
  batch_concurrency: 2
  max_file_bytes: 20000
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {{x-fake-token-interval-ms: '{interval}'}}}}
  fake-embed:
    kind: embedding
    deployments:
      - {{backend: openai, base_url: '{url}/v1'}}
  smollm2-135m:
    kind: chat
    deployments:
      - {{backend: llamacpp_server, model_file: 'builtin:smollm2-135m', n_ctx: 1024, parallel: 2}}
"""


def line(custom_id: str, url: str, body: dict[str, object]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def chat_line(custom_id: str, model: str = "fake-chat") -> str:
    return line(custom_id, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def serve(tmp: Path, fake: LiveServer, interval_ms: int = 0) -> LiveServer:
    config = write_config(tmp / "fleet.yaml", FLEET.format(url=fake.url, interval=interval_ms))
    return start_modelyard(tmp, config, ["--data-dir", str(tmp / "data")])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    live = serve(tmp_path_factory.mktemp("batches"), fake_upstream)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def wait_for(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def test_sdk_runs_a_whole_batch(client: openai.OpenAI) -> None:
    lines = [
        chat_line("chat-1"),
        chat_line("local-1", model="smollm2-135m"),
        line("embed-wrong-url", "/v1/embeddings", {"model": "fake-embed", "input": "x"}),
        "{this line is not json",
        chat_line("chat-2"),
        chat_line("chat-1"),  # duplicate custom_id
        chat_line("unknown-model", model="gpt-9"),
    ]
    uploaded = client.files.create(file=("input.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).filename == "input.jsonl"
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"team": "qa"})
    assert batch.status == "validating" and batch.metadata == {"team": "qa"}
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 3, 4)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]  # type: ignore[arg-type]
    assert sorted(o["custom_id"] for o in output) == ["chat-1", "chat-2", "local-1"]
    for entry in output:
        assert entry["response"]["status_code"] == 200 and entry["error"] is None
        assert entry["response"]["body"]["choices"][0]["message"]["content"]
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]  # type: ignore[arg-type]
    by_reason = {e["custom_id"]: e for e in errors}
    assert "must be '/v1/chat/completions'" in by_reason["embed-wrong-url"]["error"]["message"]
    assert any(e["custom_id"] is None and "not valid JSON" in e["error"]["message"] for e in errors)
    assert by_reason["unknown-model"]["response"]["status_code"] == 404
    assert any("duplicate" in (e["error"] or {}).get("message", "") for e in errors)
    assert any(b.id == batch.id for b in client.batches.list())
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_embeddings_batch(client: openai.OpenAI) -> None:
    lines = [line(f"e{i}", "/v1/embeddings", {"model": "fake-embed", "input": f"text {i}"}) for i in range(3)]
    uploaded = client.files.create(file=("e.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    done = wait_for(client, client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h").id)
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]  # type: ignore[arg-type]
    assert len(output) == 3 and all(o["response"]["body"]["data"][0]["embedding"] for o in output)


def test_bad_inputs_give_clear_errors(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 30000)), purpose="batch")
    assert too_big.value.status_code == 413
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("bin.jsonl", io.BytesIO(b"\xff\xfe\x00garbage")), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    garbage = client.files.create(file=("g.jsonl", io.BytesIO(b"not json\nstill not json\n")), purpose="batch")
    done = wait_for(client, client.batches.create(input_file_id=garbage.id, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.failed == 2
    assert done.output_file_id is None and done.error_file_id
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("b.jsonl", io.BytesIO(b"\n \n")), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=garbage.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    raw = httpx.post(server.url + "/v1/files", content=b"not multipart", headers={"content-type": "text/plain"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_cancel(tmp_path: Path, fake_upstream: LiveServer) -> None:
    live = serve(tmp_path, fake_upstream, interval_ms=200)
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)
        lines = "\n".join(chat_line(f"c{i}") for i in range(30))
        uploaded = client.files.create(file=("c.jsonl", io.BytesIO(lines.encode())), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 2, "some lines are answered")  # type: ignore[union-attr]
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        done = wait_for(client, batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        assert done.request_counts is not None and 0 < done.request_counts.completed < 30
    finally:
        live.stop()


def test_sigkill_mid_job_resumes_and_answers_every_line_once(tmp_path: Path, fake_upstream: LiveServer) -> None:
    live = serve(tmp_path, fake_upstream, interval_ms=100)  # each line takes about 0.4 s
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)
    lines = "\n".join(chat_line(f"line-{i:02d}") for i in range(24))
    uploaded = client.files.create(file=("k.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while client.batches.retrieve(batch.id).request_counts.completed < 4:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    live.stop(signal.SIGKILL)
    restarted = serve(tmp_path, fake_upstream, interval_ms=0)
    try:
        client = openai.OpenAI(base_url=restarted.url + "/v1", api_key="x", max_retries=0)
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (24, 0)
        output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]  # type: ignore[arg-type]
        ids = [o["custom_id"] for o in output]
        assert sorted(ids) == [f"line-{i:02d}" for i in range(24)]  # every line, exactly once
    finally:
        restarted.stop()
