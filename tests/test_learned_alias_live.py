"""A learned alias in a live server: real HTTP to an embedding model and chat models (the fake upstream).

The fake upstream embeds a text as (len % 7, 1, 0.5); the router file built
here says the cheap model answers prompts whose length is 0-2 mod 7 and
fails those at 4-6. A second alias's embedding model always fails: the
request must still be answered, routed by rules. A third alias's router also
has a word view that knows one word ("easy") and a band: that word settles
the pick without an embedding.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from modelyard.pipeline import router_file
from modelyard.routing.learned import LearnedRouter
from modelyard.routing.lexical import HASH_SPACE, LexicalProbe

from .conftest import LiveServer, start_modelyard, write_config

CONFIG = """
models:
  cheap:
    kind: chat
    deployments: [{{backend: openai, base_url: '{url}/v1', price: {{replica_hour: 1.0}}}}]
  strong:
    kind: chat
    deployments: [{{backend: openai, base_url: '{url}/v1', price: {{replica_hour: 10.0}}}}]
  embedder:
    kind: embedding
    deployments: [{{backend: openai, base_url: '{url}/v1'}}]
  broken-embedder:
    kind: embedding
    retry: {{max_attempts: 1}}
    deployments: [{{backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '500'}}}}]
  slow-embedder:
    kind: embedding
    retry: {{max_attempts: 1}}
    deployments: [{{backend: openai, base_url: '{url}/v1', headers: {{x-fake-latency-ms: '3000'}}, timeouts: {{total_s: 0.3}}}}]
aliases:
  smart:
    targets: [cheap, strong]
    strategy: learned
    embedding_model: embedder
    router_file: '{router}'
    quality_target: 0.9
  smart-degraded:
    targets: [cheap, strong]
    strategy: learned
    embedding_model: broken-embedder
    router_file: '{router}'
  smart-slow:
    targets: [cheap, strong]
    strategy: learned
    embedding_model: slow-embedder
    router_file: '{router}'
  smart-words:
    targets: [cheap, strong]
    strategy: learned
    embedding_model: embedder
    router_file: '{worded}'
    quality_target: 0.5
  smart-words-off:
    targets: [cheap, strong]
    strategy: learned
    embedding_model: embedder
    router_file: '{worded}'
    quality_target: 0.5
    lexical_first: false
  smart-words-intent-same:
    targets: [cheap, strong]
    strategy: learned
    embedding_model: embedder
    router_file: '{worded}'
    quality_target: 0.5
    intents: {{short: {{model: cheap, examples: [abc], threshold: 0.999}}}}
  smart-words-intent-other:
    targets: [cheap, strong]
    strategy: learned
    embedding_model: embedder
    router_file: '{worded}'
    quality_target: 0.5
    intents: {{short: {{model: strong, examples: [abc], threshold: 0.999}}}}
"""


def fake_vector(length: int) -> np.ndarray:
    v = np.array([length % 7, 1.0, 0.5], dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("learned")
    lengths = [n for n in range(7, 70) if n % 7 != 3]
    embeddings = np.stack([fake_vector(n) for n in lengths])
    quality = np.array([[1.0, 1.0] if n % 7 <= 2 else [0.0, 1.0] for n in lengths], dtype=np.float32)
    router = LearnedRouter(("cheap", "strong"), np.array([1.0, 10.0], dtype=np.float32), embeddings, quality, k=4, prior_weight=0.0)
    router_file.save(router, tmp / "router.npz", {"target": 0.9})
    # The word "easy" raises the cheap model's word-view score to sigmoid(3) = 0.953; any other text scores 0.5 for both.
    words = LexicalProbe(np.array([zlib.crc32(b"easy") % HASH_SPACE]), np.ones(1, dtype=np.float32), np.array([[3.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    band = np.array([[-0.4, -0.4], [0.4, 0.4]], dtype=np.float32)
    router_file.save(dataclasses.replace(router, lexical=words, word_band=band), tmp / "worded.npz", {"target": 0.5})
    config = CONFIG.format(url=fake_upstream.url, router=tmp / "router.npz", worded=tmp / "worded.npz")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", config))
    yield live
    live.stop()


def ask(server: LiveServer, alias: str, prompt: str, **headers: str) -> httpx.Response:
    body = {"model": alias, "messages": [{"role": "user", "content": prompt}], "max_tokens": 3}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def ask_messages(server: LiveServer, alias: str, messages: list[dict[str, object]]) -> httpx.Response:
    body = {"model": alias, "messages": messages, "max_tokens": 3}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)


def route(response: httpx.Response) -> list[str]:
    return response.headers["x-modelyard-route"].split("; ")


def test_the_embedding_decides(server: LiveServer) -> None:
    easy, hard = ask(server, "smart", "x" * 14), ask(server, "smart", "x" * 13)  # 14 % 7 = 0, 13 % 7 = 6
    assert easy.status_code == hard.status_code == 200
    assert (easy.json()["model"], hard.json()["model"]) == ("cheap", "strong")
    assert route(easy) == ["learned:target=0.9", "predicted_quality=1.000", "model=cheap"]
    assert route(hard) == ["learned:target=0.9", "predicted_quality=1.000", "model=strong"]
    cheapest = ask(server, "smart", "x" * 13, **{"x-modelyard-quality": "0"})
    assert cheapest.json()["model"] == "cheap" and route(cheapest)[:2] == ["learned:target=0", "predicted_quality=0.000"]


def test_a_failing_embedding_model_degrades_to_rules(server: LiveServer) -> None:
    response = ask(server, "smart-degraded", "x" * 13)
    assert response.status_code == 200
    assert route(response) == ["rule:short-chat", "model=cheap"]  # no vector: the built-in rule, not an error


def test_an_embedding_model_past_its_timeout_is_cut_off_and_routing_goes_on_by_rules(server: LiveServer) -> None:
    # The slow embedding model answers after 3 s; its deployment's total_s is 0.3 s.
    direct = httpx.post(server.url + "/v1/embeddings", json={"model": "slow-embedder", "input": "hello"}, timeout=30)
    assert direct.status_code == 504 and "did not answer within 0.3s" in direct.json()["error"]["message"]
    assert direct.elapsed.total_seconds() < 2.5
    routed = ask(server, "smart-slow", "x" * 13)
    assert routed.status_code == 200 and route(routed) == ["rule:short-chat", "model=cheap"]
    assert routed.elapsed.total_seconds() < 2.5


def test_metrics_count_routes_by_how_they_were_chosen(server: LiveServer) -> None:
    def scrape() -> str:
        return httpx.get(server.url + "/metrics").text

    def count(text: str, labels: str) -> float:
        line = next((row for row in text.splitlines() if row.startswith(f"modelyard_routed_requests_total{{{labels}}}")), None)
        return 0.0 if line is None else float(line.rsplit(" ", 1)[1])

    learned = 'alias="smart",model="cheap",route="learned"'
    degraded = 'alias="smart-degraded",model="cheap",route="rule:short-chat"'
    before = scrape()
    assert ask(server, "smart", "x" * 21).json()["model"] == "cheap"  # 21 % 7 = 0
    assert ask(server, "smart-degraded", "x" * 13).status_code == 200
    assert ask(server, "cheap", "x" * 13).status_code == 200  # a named model is not routed
    after = scrape()
    assert count(after, learned) == count(before, learned) + 1
    assert count(after, degraded) == count(before, degraded) + 1
    assert 'modelyard_routed_requests_total{alias="cheap"' not in after
    assert 'modelyard_route_predicted_quality_bucket{alias="smart",le="1.0",model="cheap"}' in after


def embeddings_asked(upstream: LiveServer) -> int:
    return int(httpx.get(upstream.url + "/stats").json()["embeddings"])


def route_embeddings(server: LiveServer, alias: str, result: str) -> float:
    prefix = f'modelyard_route_embeddings_total{{alias="{alias}",result="{result}"}} '
    line = next((row for row in httpx.get(server.url + "/metrics").text.splitlines() if row.startswith(prefix)), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def test_an_agent_loop_routes_on_the_kept_vector(server: LiveServer, fake_upstream: LiveServer) -> None:
    def embedded() -> int:
        return embeddings_asked(fake_upstream)

    def counted(result: str) -> float:
        return route_embeddings(server, "smart", result)

    turn = {"role": "user", "content": "y" * 35}  # 35 % 7 = 0: the cheap model
    before, kept_before, embedded_before = embedded(), counted("kept"), counted("embedded")
    first = ask_messages(server, "smart", [turn])
    assert first.status_code == 200 and embedded() == before + 1
    # The agent's next step re-sends the same user turn with a tool call and its result: no new embedding, same route.
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    step = [turn, {"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1", "content": "found"}]
    second = ask_messages(server, "smart", step)
    assert second.status_code == 200 and embedded() == before + 1
    assert route(second) == route(first) == ["learned:target=0.9", "predicted_quality=1.000", "model=cheap"]
    # A new user turn is a new routing text: embedded.
    third = ask_messages(server, "smart", [*step, {"role": "assistant", "content": "done"}, {"role": "user", "content": "z" * 34}])
    assert third.status_code == 200 and embedded() == before + 2
    assert (counted("kept"), counted("embedded")) == (kept_before + 1, embedded_before + 2)  # what /metrics tells an operator


def test_the_words_settle_a_pick_without_an_embedding(server: LiveServer, fake_upstream: LiveServer) -> None:
    before, settled_before = embeddings_asked(fake_upstream), route_embeddings(server, "smart-words", "settled")
    easy = ask(server, "smart-words", "easy")
    assert easy.status_code == 200 and easy.json()["model"] == "cheap"
    assert route(easy) == ["learned:target=0.5:words", "predicted_quality=0.953", "model=cheap"]
    assert embeddings_asked(fake_upstream) == before  # the embedding model was not asked
    # No word the probe knows: the embedding could change the pick, so it is asked and decides (13 % 7 = 6: the strong model).
    hard = ask(server, "smart-words", "x" * 13)
    assert hard.json()["model"] == "strong" and route(hard)[0] == "learned:target=0.5" and embeddings_asked(fake_upstream) == before + 1
    # lexical_first: false always embeds.
    off = ask(server, "smart-words-off", "easy")
    assert off.status_code == 200 and route(off)[0] == "learned:target=0.5" and embeddings_asked(fake_upstream) == before + 2
    assert route_embeddings(server, "smart-words", "settled") == settled_before + 1
    assert route_embeddings(server, "smart-words-off", "settled") == 0.0


def test_words_settle_past_intents_only_when_every_intent_names_the_pick(server: LiveServer, fake_upstream: LiveServer) -> None:
    for alias in ("smart-words-intent-same", "smart-words-intent-other"):
        assert ask(server, alias, "warm").status_code == 200  # the first request embeds the intents' examples
    before = embeddings_asked(fake_upstream)
    # The words settle on the cheap model, and the one intent names it too: no vector could change the model served.
    same = ask(server, "smart-words-intent-same", "easy")
    assert same.json()["model"] == "cheap" and route(same)[0] == "learned:target=0.5:words"
    assert embeddings_asked(fake_upstream) == before
    # An intent naming the strong model could take the prompt there if its vector matched: the vector is asked for.
    other = ask(server, "smart-words-intent-other", "easy")
    assert other.status_code == 200 and not route(other)[0].endswith(":words")
    assert embeddings_asked(fake_upstream) == before + 1
