"""Configured stages through a live server: the response cache, the PII filter, the context budget.

The fake upstream is a real HTTP server that records what it received
(``GET /received``) and can echo the last message back (``x-fake-echo``), so
the tests assert on what an upstream really saw and what a client really got.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import LiveServer, start_modelyard, write_config

CONFIG = """
models:
  echo:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-echo: '1'}}, price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
  plain:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
  cut:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-fail-after: '2'}}}}
  guarded:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-echo: '1'}}}}
  summarizer:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-text: 'The user asked about the sea and got long answers.'}}, price: {{input_per_1m: 1000, output_per_1m: 1000}}}}
  long:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-echo: '1'}}}}
  minilm:
    kind: embedding
    context_window: 256
    deployments:
      - {{backend: sentence-transformers, model_path: 'builtin:all-minilm-l6-v2'}}
stages:
  - kind: pii_filter
    models: [echo]
    options: {{reversible: true}}
  - kind: pii_filter
    models: [guarded]
    options: {{action: block, entities: [CREDIT_CARD, IBAN]}}
  - kind: context_budget
    models: [long]
    options: {{max_prompt_tokens: 300, summarize_with: summarizer, summary_tokens: 40}}
  - kind: response_cache
    models: [echo, plain, cut]
    options: {{ttl_s: 600, private_tenants: [secretive], semantic: {{threshold: 0.9}}}}
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[tuple[LiveServer, LiveServer]]:
    tmp = tmp_path_factory.mktemp("stages")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", CONFIG.format(url=fake_upstream.url)))
    yield live, fake_upstream
    live.stop()


def chat(server: LiveServer, model: str, content: str, headers: dict[str, str] | None = None, **extra: object) -> httpx.Response:
    body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": content}]} | extra
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=60)


def upstream_count(fake: LiveServer) -> int:
    return int(httpx.get(fake.url + "/stats").json()["requests"])


def last_received(fake: LiveServer) -> dict[str, object]:
    return httpx.get(fake.url + "/received").json()[-1]  # type: ignore[no-any-return]


def sse_text(response: httpx.Response) -> str:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    return "".join(json.loads(line)["choices"][0]["delta"].get("content") or "" for line in lines if json.loads(line)["choices"])


def test_exact_hit_is_replayed_as_a_stream_without_calling_the_upstream(servers: tuple[LiveServer, LiveServer]) -> None:
    live, fake = servers
    first = chat(live, "plain", "Tell me a unique thing number 4711", max_tokens=5)
    assert first.status_code == 200 and first.headers["x-modelyard-cache"] == "miss"
    before = upstream_count(fake)
    again = chat(live, "plain", "Tell me a unique thing number 4711", max_tokens=5, stream=True)
    assert again.status_code == 200
    assert again.headers["x-modelyard-cache"] == "hit" and again.headers["x-modelyard-cache-match"] == "exact"
    assert again.text.rstrip().endswith("data: [DONE]")
    assert sse_text(again) == first.json()["choices"][0]["message"]["content"]
    assert upstream_count(fake) == before
    assert again.headers["x-modelyard-attempts"] == "0"


def test_semantic_hit_and_polarity_veto(servers: tuple[LiveServer, LiveServer]) -> None:
    live, fake = servers
    assert chat(live, "echo", "How do I enable two factor authentication on GitHub?").headers["x-modelyard-cache"] == "miss"
    near = chat(live, "echo", "how do I enable two-factor authentication on GitHub")
    assert near.headers["x-modelyard-cache"] == "hit", near.headers
    assert near.headers["x-modelyard-cache-match"].startswith("semantic")
    assert near.json()["choices"][0]["message"]["content"] == "How do I enable two factor authentication on GitHub?"
    opposite = chat(live, "echo", "How do I disable two factor authentication on GitHub?")
    assert opposite.headers["x-modelyard-cache"] == "miss"
    assert opposite.json()["choices"][0]["message"]["content"] == "How do I disable two factor authentication on GitHub?"


def test_what_is_never_cached(servers: tuple[LiveServer, LiveServer]) -> None:
    live, fake = servers
    httpx.post(fake.url + "/fault", json={"mode": "status", "status": 500})
    try:
        failed = chat(live, "plain", "an error please 99", max_tokens=3)
    finally:
        httpx.post(fake.url + "/fault", json={"mode": None})
    assert failed.status_code >= 500
    assert chat(live, "plain", "an error please 99", max_tokens=3).headers["x-modelyard-cache"] == "miss"  # the error was not stored
    sampled = chat(live, "plain", "sampled 1", temperature=0.8)
    assert sampled.headers["x-modelyard-cache"] == "bypass"
    assert chat(live, "plain", "two choices", n=2).headers["x-modelyard-cache"] == "bypass"
    chat(live, "plain", "asked to skip", max_tokens=3)
    skipped = chat(live, "plain", "asked to skip", headers={"cache-control": "no-cache"}, max_tokens=3)
    assert skipped.headers["x-modelyard-cache"] == "bypass"
    for _ in range(2):  # the upstream drops every stream after two tokens: nothing is stored, the second is a miss too
        cut = chat(live, "cut", "cut short 5", max_tokens=6, stream=True)
        assert cut.headers["x-modelyard-cache"] == "miss"
        assert "data: [DONE]" not in cut.text


def test_hits_are_ledger_rows_with_no_cost_and_the_saving(servers: tuple[LiveServer, LiveServer]) -> None:
    live, _ = servers
    chat(live, "plain", "ledger question 8", max_tokens=4)
    chat(live, "plain", "ledger question 8", max_tokens=4)
    metrics = httpx.get(live.url + "/metrics").text
    hits = [line for line in metrics.splitlines() if line.startswith('modelyard_cache_requests_total{model="plain",result="hit"}')]
    assert hits and float(hits[0].split()[-1]) >= 1
    saved = [line for line in metrics.splitlines() if line.startswith("modelyard_cache_saved_usd_total")]
    assert saved and float(saved[0].split()[-1]) > 0


def test_redacted_prompt_never_reaches_the_upstream_and_the_answer_gets_values_back(servers: tuple[LiveServer, LiveServer]) -> None:
    live, fake = servers
    prompt = "Email jane.roe@example.com or call +1 415-555-0132 about card 4111 1111 1111 1111"
    for stream in (False, True):
        response = chat(live, "echo", prompt, stream=stream, headers={"cache-control": "no-cache"})
        assert response.status_code == 200
        received = last_received(fake)["messages"][-1]["content"]  # type: ignore[index]
        assert received == "Email [EMAIL_1] or call [PHONE_1] about card [CREDIT_CARD_1]"
        text = sse_text(response) if stream else response.json()["choices"][0]["message"]["content"]
        assert text == prompt
        assert response.headers["x-modelyard-pii"] == "redacted CREDIT_CARD:1,EMAIL:1,PHONE:1"


def test_block_refuses_before_any_model_runs(servers: tuple[LiveServer, LiveServer]) -> None:
    live, fake = servers
    before = upstream_count(fake)
    refused = chat(live, "guarded", "my IBAN is DE89 3704 0044 0532 0130 00")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "pii_detected"
    assert "IBAN" in refused.json()["error"]["message"] and "DE89" not in refused.text
    assert upstream_count(fake) == before
    assert chat(live, "guarded", "mail me at a@b.io").status_code == 200  # only the configured entity types


def test_dropped_turns_are_summarised_by_the_configured_model(servers: tuple[LiveServer, LiveServer]) -> None:
    live, fake = servers
    turns = [{"role": r, "content": f"turn {i} " + "the sea is wide " * 40} for i, r in enumerate(["user", "assistant"] * 3)]
    messages = [{"role": "system", "content": "Be brief."}, *turns, {"role": "user", "content": "and now?"}]
    response = httpx.post(live.url + "/v1/chat/completions", json={"model": "long", "messages": messages, "temperature": 0}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-modelyard-context"].endswith("summary=summarizer")
    sent = last_received(fake)["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[1]["role"] == "system" and sent[1]["content"].startswith("Summary of ") and "(written by summarizer)" in sent[1]["content"]  # type: ignore[index]
    assert sent[1]["content"].endswith("The user asked about the sea and got long answers.")  # type: ignore[index]
    assert sent[-1] == {"role": "user", "content": "and now?"}


CONTEXT_CONFIG = """
models:
  smollm2-135m:
    kind: chat
    context_window: 2048
    deployments:
      - {backend: llamacpp_server, model_file: 'builtin:smollm2-135m', parallel: 1, n_ctx: 2048}
stages:
  - kind: context_budget
"""


def test_a_long_conversation_is_trimmed_and_answered_by_a_real_model(tmp_path: Path) -> None:
    live = start_modelyard(tmp_path, write_config(tmp_path / "fleet.yaml", CONTEXT_CONFIG))
    try:
        turns = []
        for i in range(12):
            turns += [{"role": "user", "content": f"Tell me fact {i} about the sea. " + "The sea is wide and deep. " * 30},
                      {"role": "assistant", "content": "The sea covers most of the planet. " * 30}]
        messages = [{"role": "system", "content": "You answer briefly."}, *turns, {"role": "user", "content": "What colour is the sea?"}]
        body = {"model": "smollm2-135m", "messages": messages, "max_tokens": 8, "temperature": 0}
        response = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=300)
        assert response.status_code == 200, response.text
        assert response.headers["x-modelyard-context"].startswith("trimmed=")
        assert response.headers["x-modelyard-context"].endswith("counted=engine")  # llama.cpp's own tokenizer counted
        assert 0 < response.json()["usage"]["prompt_tokens"] <= 2048 - 8
        one_huge = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "sea " * 5000}], "max_tokens": 8}
        refused = httpx.post(live.url + "/v1/chat/completions", json=one_huge, timeout=60)
        assert refused.status_code == 400 and "context budget" in refused.json()["error"]["message"]
    finally:
        live.stop()
