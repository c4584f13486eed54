"""Fault injection over real HTTP: every upstream fault, streaming and not.

Each faulty model has two deployments of the fake upstream: the first is
scripted to fail (and is listed first, so it is tried first), the second is
healthy. The client must get the healthy answer; with no healthy deployment it
must get a clean OpenAI-style error within its deadline. Afterwards nothing
may be left in flight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import LiveServer, free_port, start_modelyard, wait_until, write_config

HEALTHY_TEXT = "alpha bravo charlie delta"

FAULTS: dict[str, str] = {
    "status-500": '{x-fake-status: "500"}',
    "status-503": '{x-fake-status: "503"}',
    "status-429-retry-after": '{x-fake-status: "429", x-fake-retry-after: "30"}',
    "status-429-bare": '{x-fake-status: "429", x-fake-retry-after: "none"}',
    "reset-before-body": '{x-fake-fail-after: "0"}',
    "partial-then-reset": '{x-fake-fail-after: "2"}',
    "slow-first-token": '{x-fake-latency-ms: "5000"}',
    "stalled-stream": '{x-fake-stall-after: "1"}',
    "invalid-json": '{x-fake-garbage: "1"}',
    "wrong-content-type": '{x-fake-content-type: "1"}',
}
# Faults that strike after the first token: a non-streaming client still gets the
# healthy answer (the whole answer is retried), a streaming one an error event.
MIDSTREAM = {"partial-then-reset", "stalled-stream"}


def fleet_yaml(url: str) -> str:
    lines = ["models:"]
    for name, headers in FAULTS.items():
        lines += [
            f"  {name}:",
            "    kind: chat",
            "    breaker: {consecutive_failures: 1000, min_requests: 1000}",  # keep exercising the failover path
            "    deployments:",
            f"      - {{name: faulty, backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {headers}, timeouts: {{first_token_s: 0.5, stall_s: 0.5}}}}",
            f"      - {{name: healthy, backend: openai, base_url: '{url}/v1', upstream_model: fake}}",
        ]
    for name, headers in FAULTS.items():  # the same faults on deployments that fetch a non-streamed request whole
        lines += [
            f"  whole-{name}:",
            "    kind: chat",
            "    breaker: {consecutive_failures: 1000, min_requests: 1000}",
            "    deployments:",
            f"      - {{name: faulty, backend: openai, base_url: '{url}/v1', upstream_model: fake, headers: {headers}, "
            "upstream_streaming: when_client_streams, timeouts: {first_token_s: 0.5, stall_s: 0.5, total_s: 0.5}}",
            f"      - {{name: healthy, backend: openai, base_url: '{url}/v1', upstream_model: fake, upstream_streaming: when_client_streams}}",
        ]
    closed = f"http://127.0.0.1:{free_port()}/v1"
    lines += [
        "  refused:",
        "    kind: chat",
        "    deployments:",
        f"      - {{name: faulty, backend: openai, base_url: '{closed}'}}",
        f"      - {{name: healthy, backend: openai, base_url: '{url}/v1', upstream_model: fake}}",
        "  all-broken:",
        "    kind: chat",
        "    retry: {max_attempts: 3, backoff_base_s: 0.01}",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '500'}}}}",
        f"      - {{name: b, backend: openai, base_url: '{closed}'}}",
        "  all-slow:",
        "    kind: chat",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{url}/v1', headers: {{x-fake-latency-ms: '10000'}}}}",
        "  primary-down:",
        "    kind: chat",
        "    fallbacks: [backup]",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{closed}'}}",
        "  backup:",
        "    kind: chat",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{url}/v1', upstream_model: fake}}",
        "  small-window:",
        "    kind: chat",
        "    context_window: 1000",
        "    fallbacks: [tiny-window, big-window]",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '400', x-fake-error-code: context_length_exceeded}}}}",
        "  tiny-window:",
        "    kind: chat",
        "    context_window: 500",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '500'}}}}",
        "  big-window:",
        "    kind: chat",
        "    context_window: 100000",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{url}/v1', upstream_model: fake}}",
        "  tripwire:",
        "    kind: chat",
        "    retry: {max_attempts: 1}",
        "    breaker: {consecutive_failures: 3, min_requests: 1000, cooldown_s: 600}",
        "    deployments:",
        f"      - {{name: a, backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '500'}}}}",
        "  hedged:",
        "    kind: chat",
        "    hedge: {enabled: true, after_ms: 150}",
        "    deployments:",
        f"      - {{name: slow, backend: openai, base_url: '{url}/v1', headers: {{x-fake-latency-ms: '3000'}}}}",
        f"      - {{name: fast, backend: openai, base_url: '{url}/v1'}}",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("faults")
    server = start_modelyard(tmp, write_config(tmp / "fleet.yaml", fleet_yaml(fake_upstream.url)))
    yield server
    server.stop()


def body(model: str, stream: bool, max_tokens: int = 4) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, "stream": stream}


def call(server: LiveServer, model: str, stream: bool, headers: dict[str, str] | None = None) -> tuple[int, str, httpx.Headers, dict[str, object] | None]:
    """(status, text of the answer, headers, error body if any)."""
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body(model, stream), headers=headers, timeout=30) as response:
        raw = response.read().decode()
    if response.status_code != 200:
        return response.status_code, "", response.headers, json.loads(raw)["error"]
    if not stream:
        return 200, json.loads(raw)["choices"][0]["message"]["content"], response.headers, None
    text, error = "", None
    for line in raw.splitlines():
        if not line.startswith("data: {"):
            continue
        event = json.loads(line[6:])
        if "error" in event:
            error = event["error"]
        for choice in event.get("choices", []):
            text += choice["delta"].get("content") or ""
    assert error is not None or raw.rstrip().endswith("data: [DONE]")
    return 200, text, response.headers, error


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", [*FAULTS, "refused"])
def test_fault_is_invisible_when_a_healthy_deployment_exists(fault_server: LiveServer, fault: str, stream: bool) -> None:
    started = time.monotonic()
    status, text, headers, error = call(fault_server, fault, stream)
    if fault in MIDSTREAM and stream:
        # Tokens had reached the client: the stream must end with an error event, never silently.
        assert status == 200 and text.startswith("alpha") and error is not None
        assert error["type"] in ("upstream_error", "timeout_error")
        return
    assert (status, error) == (200, None)
    assert text == HEALTHY_TEXT
    assert headers["x-modelyard-deployment"] == f"{fault}/healthy"
    assert int(headers["x-modelyard-attempts"]) >= 2
    assert time.monotonic() - started < 5  # a 30 s Retry-After from the faulty one must not delay the healthy one


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_is_invisible_on_deployments_that_fetch_whole_answers(fault_server: LiveServer, fake_upstream: LiveServer, fault: str) -> None:
    """``upstream_streaming: when_client_streams``: a non-streamed request is fetched whole, and every fault (a
    hung upstream caught by ``total_s``, an answer dropped halfway, garbage) still fails over to the healthy one."""
    started = time.monotonic()
    status, text, headers, error = call(fault_server, f"whole-{fault}", False)
    assert (status, error, text) == (200, None, HEALTHY_TEXT)
    assert headers["x-modelyard-deployment"] == f"whole-{fault}/healthy"
    assert int(headers["x-modelyard-attempts"]) >= 2
    assert time.monotonic() - started < 5
    assert httpx.get(fake_upstream.url + "/received").json()[-1]["stream"] is False


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_no_healthy_deployment_is_a_clean_error(fault_server: LiveServer, stream: bool) -> None:
    status, _, headers, error = call(fault_server, "all-broken", stream)
    assert status == 502 and error is not None and error["type"] == "upstream_error"
    assert int(headers["x-modelyard-attempts"]) == 3


def test_deadline_header_bounds_the_wait(fault_server: LiveServer) -> None:
    started = time.monotonic()
    status, _, _, error = call(fault_server, "all-slow", False, headers={"x-modelyard-timeout": "1.5"})
    assert status == 504 and error is not None and error["type"] == "timeout_error"
    assert time.monotonic() - started < 4
    bad = httpx.post(fault_server.url + "/v1/chat/completions", json=body("all-slow", False), headers={"x-modelyard-timeout": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-modelyard-timeout"


def test_fallback_model_serves_when_primary_is_down(fault_server: LiveServer) -> None:
    status, text, headers, _ = call(fault_server, "primary-down", False)
    assert status == 200 and text == HEALTHY_TEXT
    assert headers["x-modelyard-model"] == "backup"


def test_context_overflow_falls_back_to_a_larger_window(fault_server: LiveServer) -> None:
    status, text, headers, _ = call(fault_server, "small-window", False)
    assert status == 200 and text == HEALTHY_TEXT
    assert headers["x-modelyard-model"] == "big-window"
    assert headers["x-modelyard-attempts"] == "2"  # tiny-window (smaller than the overflowed one) was skipped


def test_hedging_takes_the_faster_copy(fault_server: LiveServer) -> None:
    started = time.monotonic()
    status, text, headers, _ = call(fault_server, "hedged", False)
    elapsed = time.monotonic() - started
    assert status == 200 and text == HEALTHY_TEXT
    assert headers["x-modelyard-deployment"] == "hedged/fast"
    assert elapsed < 2.0  # the slow copy takes 3 s


def test_nothing_leaks(fault_server: LiveServer) -> None:
    def idle() -> bool:  # abandoned upstream calls (the losers of failover) have been cleaned up
        return all(d["outstanding"] == 0 for d in httpx.get(fault_server.url + "/admin/fleet").json()["deployments"])

    for _ in range(2):
        for fault in FAULTS:
            call(fault_server, fault, True)
    wait_until(idle, "nothing is outstanding", timeout=20)
    before = httpx.get(fault_server.url + "/admin/fleet").json()
    for fault in FAULTS:
        call(fault_server, fault, True)
        call(fault_server, fault, False)
    wait_until(idle, "nothing is outstanding", timeout=20)
    after = httpx.get(fault_server.url + "/admin/fleet").json()
    assert after["tasks"] <= before["tasks"] + 2


def breaker_gauge(server: LiveServer, deployment: str) -> float:
    line = next(x for x in httpx.get(server.url + "/metrics").text.splitlines() if x.startswith(f'modelyard_circuit_breaker_state{{deployment="{deployment}"}}'))
    return float(line.rsplit(" ", 1)[1])


def upstream_requests(fake: LiveServer) -> int:
    return int(httpx.get(fake.url + "/stats").json()["requests"])


def test_the_breaker_opens_after_its_failures_and_stops_sending(fault_server: LiveServer, fake_upstream: LiveServer) -> None:
    assert httpx.get(fault_server.url + "/admin/breakers").json()["tripwire/a"]["state"] == "closed"
    assert breaker_gauge(fault_server, "tripwire/a") == 0
    for _ in range(3):  # consecutive_failures: 3
        assert call(fault_server, "tripwire", False)[0] >= 500
    assert httpx.get(fault_server.url + "/admin/breakers").json()["tripwire/a"]["state"] == "open"
    assert breaker_gauge(fault_server, "tripwire/a") == 2
    sent = upstream_requests(fake_upstream)
    status, _, headers, error = call(fault_server, "tripwire", False)
    assert status == 503 and error is not None and "circuit open" in str(error["message"])
    assert float(headers["retry-after"]) > 500  # most of the 600 s cooldown is still ahead
    assert upstream_requests(fake_upstream) == sent  # an open circuit sends nothing upstream
