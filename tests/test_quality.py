"""Validation, repair and cascades through a live server against the fake upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from .conftest import LiveServer, start_modelyard, write_config

CONFIG = """
models:
  cheap:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-text: 'sure thing', x-fake-logprob: '-0.2'}}, price: {{input_per_1m: 0.1, output_per_1m: 0.1}}}}
  unsure:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-text: '{{"answer": 1}}', x-fake-logprob: '-3.5'}}}}
  strong:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-text: '{{"answer": 42}}', x-fake-logprob: '-0.1'}}, price: {{input_per_1m: 5, output_per_1m: 15}}}}
aliases:
  json-cascade:
    strategy: cascade
    targets: [cheap, strong]
  confident-cascade:
    strategy: cascade
    targets: [unsure, strong]
    min_mean_logprob: -1.0
  digits-only:
    targets: [cheap]
    validators:
      - {{type: regex, pattern: '^[0-9]+$'}}
  short:
    targets: [strong]
    validators:
      - {{type: max_length, max_chars: 100}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("quality")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", CONFIG.format(url=fake_upstream.url)))
    yield live
    live.stop()


def ask(server: LiveServer, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 20} | extra
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)


def test_json_cascade_repairs_then_escalates(server: LiveServer) -> None:
    response = ask(server, "json-cascade", response_format={"type": "json_object"})
    assert response.status_code == 200
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"answer": 42}
    assert response.headers["x-modelyard-model"] == response.json()["model"] == "strong"
    assert response.headers["x-modelyard-attempts"] == "3"  # cheap, cheap with the repair note, strong
    assert response.headers["x-modelyard-route"] == "cascade; escalated=strong; model=strong"


def test_cascade_stays_cheap_when_the_cheap_answer_passes(server: LiveServer) -> None:
    response = ask(server, "json-cascade")
    assert response.status_code == 200 and response.headers["x-modelyard-model"] == "cheap"
    assert response.json()["choices"][0]["message"]["content"] == "sure thing"


def test_low_confidence_escalates_and_logprobs_stay_hidden(server: LiveServer) -> None:
    response = ask(server, "confident-cascade")
    assert response.status_code == 200 and response.headers["x-modelyard-model"] == "strong"
    assert response.headers["x-modelyard-attempts"] == "2"  # no repair round for low confidence
    assert response.json()["choices"][0]["logprobs"] is None  # the client did not ask for them


def test_validator_failure_everywhere_is_a_clean_502(server: LiveServer) -> None:
    response = ask(server, "digits-only")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "output_validation_failed" and "regular expression" in error["message"]
    assert response.headers["x-modelyard-attempts"] == "2"  # the answer and one repair


def test_checked_answers_still_stream(server: LiveServer) -> None:
    body = {"model": "json-cascade", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": True, "response_format": {"type": "json_object"}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in lines[:-1] if json.loads(line[6:])["choices"])
    assert json.loads(text) == {"answer": 42}
    assert response.headers["x-modelyard-model"] == "strong"


def test_passing_validator(server: LiveServer) -> None:
    response = ask(server, "short")
    assert response.status_code == 200 and response.headers["x-modelyard-attempts"] == "1"
