"""Agent sessions through a live server: budgets in each API's own error shape, the session record, the CLI.

The fake upstream (a real HTTP server) answers ``tooly`` with a tool call
(``x-fake-tool-call``) and ``fake`` with text; budgets are counted in the real
Redis (``--redis-url``), the record in the data directory's SQLite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from .conftest import LiveServer, start_modelyard, write_config
from .services import REDIS_ENV, service_url

MASTER = "sk-sessions-test"
CONFIG = """
models:
  fake:
    kind: chat
    context_window: 1000
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-text: 'done here'}}, price: {{input_per_1m: 1, output_per_1m: 1}}}}
  tooly:
    kind: chat
    context_window: 1000
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-tool-call: 'get_weather {{"city": "Paris"}}'}}}}
stages:
  - kind: session_budget
    options: {{calls: 3, tokens: 5000}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[tuple[LiveServer, Path]]:
    tmp = tmp_path_factory.mktemp("sessions")
    data = tmp / "data"
    extra = ["--data-dir", str(data), "--redis-url", service_url(REDIS_ENV)]
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", CONFIG.format(url=fake_upstream.url)), extra, env={"MODELYARD_MASTER_KEY": MASTER})
    yield live, data
    live.stop()


def chat(live: LiveServer, model: str, messages: list[dict[str, object]], session: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {MASTER}"} | ({"x-modelyard-session": session} if session else {})
    return httpx.post(live.url + "/v1/chat/completions", json={"model": model, "max_tokens": 50, "messages": messages}, headers=headers, timeout=60)


def admin(live: LiveServer, path: str) -> httpx.Response:
    return httpx.get(live.url + path, headers={"authorization": f"Bearer {MASTER}"}, timeout=30)


ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_the_fourth_call_of_a_session_is_refused_and_the_session_stays_stopped(server: tuple[LiveServer, Path]) -> None:
    live, _ = server
    session = f"agent-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        assert chat(live, "fake", ASK, session).status_code == 200
    refused = chat(live, "fake", ASK, session)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "session_budget_exceeded" and "calls budget is spent" in error["message"]
    assert chat(live, "fake", ASK, session).json()["error"]["code"] == "session_budget_exceeded"
    assert chat(live, "fake", ASK, f"{session}-other").status_code == 200  # its own budget
    for _ in range(5):
        assert chat(live, "fake", ASK, None).status_code == 200  # no session: no session budget


def test_anthropic_and_responses_sessions_get_their_own_error_shapes(server: tuple[LiveServer, Path]) -> None:
    live, _ = server
    claude = anthropic.Anthropic(base_url=live.url, api_key=MASTER, max_retries=0, timeout=60)
    user = f"claude-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        claude.messages.create(model="fake", max_tokens=20, messages=[{"role": "user", "content": "hi"}], metadata={"user_id": user})
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="fake", max_tokens=20, messages=[{"role": "user", "content": "hi"}], metadata={"user_id": user})
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "session_budget_exceeded"

    sdk = openai.OpenAI(base_url=live.url + "/v1", api_key=MASTER, max_retries=0, timeout=60)
    first = sdk.responses.create(model="fake", input="step one", max_output_tokens=20)
    second = sdk.responses.create(model="fake", input="step two", previous_response_id=first.id, max_output_tokens=20)
    third = sdk.responses.create(model="fake", input="step three", previous_response_id=second.id, max_output_tokens=20)
    with pytest.raises(openai.BadRequestError) as refused:  # the chain is one session, named by its first response
        sdk.responses.create(model="fake", input="step four", previous_response_id=third.id, max_output_tokens=20)
    assert refused.value.code == "session_budget_exceeded"
    assert admin(live, f"/admin/sessions/{first.id}").json()["steps"] == 4


def test_a_sessions_steps_and_tool_traffic_are_recorded(server: tuple[LiveServer, Path]) -> None:
    live, data = server
    session = f"tools-{uuid.uuid4().hex[:8]}"
    answer = chat(live, "tooly", ASK, session).json()["choices"][0]["message"]
    call = answer["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    history = [*ASK, answer, {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees and sunny"}]
    with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=60,
                      headers={"authorization": f"Bearer {MASTER}", "x-modelyard-session": session},
                      json={"model": "fake", "max_tokens": 50, "messages": history, "stream": True}) as streamed:
        assert streamed.status_code == 200 and "[DONE]" in streamed.read().decode()
    chat(live, "fake", history, session)
    assert chat(live, "fake", history, session).status_code == 400  # the fourth call

    found = admin(live, f"/admin/sessions/{session}").json()
    assert found["steps"] == 4 and found["models"] == ["fake", "tooly"] and found["tool_calls"] == 1
    first, second = found["history"][:2]
    assert first["tool_calls"] == [{"call_id": call["id"], "name": "get_weather", "content": '{"city": "Paris"}'}]
    assert second["tool_results"] == [{"call_id": call["id"], "name": "get_weather", "content": "18 degrees and sunny"}]
    assert found["history"][2]["tool_results"] == []  # the same result resent (a retried step) is shown where it first came
    assert found["stopped"].startswith("calls: 3 of 3 model calls") and found["history"][3]["status"] == 400
    listed = admin(live, "/admin/sessions?limit=500").json()["data"]
    assert any(row["session"] == session and row["steps"] == 4 and row["tool_calls"] == 1 and row["stopped"] for row in listed)

    shown = subprocess.run([sys.executable, "-m", "modelyard.cli", "sessions", "show", session, "--data-dir", str(data)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "4 steps" in shown.stdout and "-> get_weather" in shown.stdout and "<- get_weather" in shown.stdout and "stopped: calls" in shown.stdout
    as_json = subprocess.run([sys.executable, "-m", "modelyard.cli", "sessions", "show", session, "--json", "--data-dir", str(data)],
                             capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["tool_calls"] == 1
    missing = subprocess.run([sys.executable, "-m", "modelyard.cli", "sessions", "show", "no-such-session", "--data-dir", str(data)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no session" in missing.stderr
