"""Keys, tenants, isolation and rate limits, over real HTTP with the official SDK."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import LiveServer, free_port, start_modelyard, write_config

MASTER = "sk-master-test"
FLEET = """
models:
  priced:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake, price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake}}
  broken:
    kind: chat
    retry: {{max_attempts: 1}}
    deployments:
      - {{backend: openai, base_url: '{url}/v1', headers: {{x-fake-status: '500'}}, price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
  fake-embed:
    kind: embedding
    deployments:
      - {{backend: openai, base_url: '{url}/v1'}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("tenancy")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", FLEET.format(url=fake_upstream.url)), ["--data-dir", str(tmp / "data")], env={"MODELYARD_MASTER_KEY": MASTER})
    yield live
    live.stop()


def admin(server: LiveServer, path: str, body: dict[str, object] | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {MASTER}"}
    if body is None:
        return httpx.get(server.url + path, headers=headers)
    return httpx.post(server.url + path, json=body, headers=headers)


@pytest.fixture(scope="module")
def keys(server: LiveServer) -> dict[str, str]:
    for tenant in ("acme", "globex"):
        assert admin(server, "/admin/tenants", {"id": tenant}).status_code == 201
    a = admin(server, "/admin/keys", {"tenant": "acme", "name": "ci", "allowed_models": ["fake-chat"]}).json()
    b = admin(server, "/admin/keys", {"tenant": "globex", "rpm": 5}).json()
    c = admin(server, "/admin/keys", {"tenant": "globex", "tpm": 100}).json()
    return {"acme": a["key"], "acme_id": a["id"], "globex": b["key"], "globex_tpm": c["key"]}


def sdk(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def ask(client: openai.OpenAI, model: str = "fake-chat") -> str:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3).choices[0].message.content or ""


def test_keys_are_required_and_shown_once(server: LiveServer, keys: dict[str, str]) -> None:
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(server, "my-wrong"))
    assert httpx.post(server.url + "/v1/chat/completions", json={}).status_code == 401
    assert httpx.get(server.url + "/admin/keys", headers={"Authorization": f"Bearer {keys['acme']}"}).status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200  # probes stay open
    assert ask(sdk(server, keys["acme"])) == "alpha bravo charlie"
    assert ask(sdk(server, MASTER)) == "alpha bravo charlie"
    listed = admin(server, "/admin/keys").json()["data"]
    assert all("key" not in k and "hash" not in k for k in listed)
    assert keys["acme"] not in str(listed)


def test_allowed_models(server: LiveServer, keys: dict[str, str]) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        sdk(server, keys["acme"]).embeddings.create(model="fake-embed", input="x")


def test_tenants_never_see_each_others_files_or_batches(server: LiveServer, keys: dict[str, str]) -> None:
    acme, globex = sdk(server, keys["acme"]), sdk(server, keys["globex_tpm"])
    line = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "fake-chat", "messages": [{"role": "user", "content": "x"}]}}'
    uploaded = acme.files.create(file=("a.jsonl", io.BytesIO(line)), purpose="batch")
    batch = acme.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        globex.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        globex.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert uploaded.id not in {f.id for f in globex.files.list()}
    assert batch.id not in {b.id for b in globex.batches.list()}


def test_rate_limit_is_exact_under_concurrency(server: LiveServer, keys: dict[str, str]) -> None:
    statuses: list[int] = []
    headers: list[httpx.Headers] = []

    def one() -> None:
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "fake-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                       headers={"Authorization": f"Bearer {keys['globex']}"}, timeout=30)
        statuses.append(r.status_code)
        headers.append(r.headers)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(200) == 5 and statuses.count(429) == 7  # rpm 5, exactly
    refused = next(h for h, s in zip(headers, statuses, strict=True) if s == 429)
    assert int(refused["retry-after"]) >= 1 and refused["x-ratelimit-limit-requests"] == "5"
    accepted = next(h for h, s in zip(headers, statuses, strict=True) if s == 200)
    assert accepted["x-ratelimit-limit-requests"] == "5" and int(accepted["x-ratelimit-remaining-requests"]) < 5


def test_token_limit(server: LiveServer, keys: dict[str, str]) -> None:
    client = sdk(server, keys["globex_tpm"])
    assert client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "x"}], max_tokens=40).choices
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "x"}], max_tokens=90)
    assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


def test_a_request_larger_than_the_whole_token_limit_is_told_so_with_no_retry_after(server: LiveServer, keys: dict[str, str]) -> None:
    # max_tokens 200 against a 100-token-per-minute key: waiting can never help, so no Retry-After (a batch line must not wait on it).
    response = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys['globex_tpm']}"},
                          json={"model": "fake-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 200}, timeout=30)
    assert response.status_code == 429 and "retry-after" not in response.headers
    assert "Request too large" in response.json()["error"]["message"] and "limit 100" in response.json()["error"]["message"]


def test_usage_per_tenant_and_revocation(server: LiveServer, keys: dict[str, str]) -> None:
    rows = admin(server, "/admin/usage?group_by=tenant").json()["data"]
    tenants = {r["tenant"] for r in rows}
    assert {"acme", "globex", "default"} <= tenants
    assert admin(server, f"/admin/keys/{keys['acme_id']}/revoke", {}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(server, keys["acme"]))


def test_open_mode_refuses_a_public_address(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "modelyard.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "MODELYARD_MASTER_KEY" in result.stderr


def test_budget_holds_under_100_concurrent_requests(server: LiveServer) -> None:
    assert admin(server, "/admin/tenants", {"id": "thrifty"}).status_code == 201
    assert admin(server, "/admin/tenants/thrifty/budget", {"total": 0.05}).status_code == 200
    key = admin(server, "/admin/keys", {"tenant": "thrifty"}).json()["key"]
    per_request = (1 * 1000 + 4 * 2000) / 1_000_000  # 1 prompt token, 4 completion tokens: $0.009, reserved and spent
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
                       headers={"Authorization": f"Bearer {key}"}, timeout=60)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(ok) + len(refused) == 100
    # The worst case reserved equals the actual cost (1 byte of prompt, 4 tokens), so holds never strand budget:
    # exactly floor(0.05 / 0.009) = 5 fit, whatever the interleaving, and a sixth would overspend.
    assert len(ok) == 5
    assert refused[0].json()["error"]["type"] == "insufficient_quota"
    spent = [r for r in admin(server, "/admin/usage?group_by=tenant").json()["data"] if r["tenant"] == "thrifty"][0]["cost_usd"]
    assert spent == pytest.approx(5 * per_request) and spent <= 0.05
    assert admin(server, "/admin/tenants/nobody/budget", {"total": 1}).status_code == 404


def test_price_plan_gives_revenue_and_margin(server: LiveServer) -> None:
    assert admin(server, "/admin/tenants", {"id": "paying"}).status_code == 201
    assert admin(server, "/admin/tenants/paying/plan", {"input_per_1m": 3000, "output_per_1m": 5000, "per_request": 0.001}).status_code == 200
    key = admin(server, "/admin/keys", {"tenant": "paying"}).json()["key"]
    client = sdk(server, key)
    for _ in range(2):
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "x"}], max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])  # errors earn nothing
    row = [r for r in admin(server, "/admin/usage?group_by=tenant").json()["data"] if r["tenant"] == "paying"][0]
    revenue = 2 * ((1 * 3000 + 4 * 5000) / 1_000_000 + 0.001)
    cost = 2 * (1 * 1000 + 4 * 2000) / 1_000_000
    assert row["requests"] == 3 and row["errors"] == 1
    assert row["revenue_usd"] == pytest.approx(revenue) and row["cost_usd"] == pytest.approx(cost)
    assert row["margin_usd"] == pytest.approx(revenue - cost)


def test_metrics_show_cost_ttft_and_budgets(server: LiveServer) -> None:
    text = httpx.get(server.url + "/metrics").text
    assert 'modelyard_budget_remaining_usd{period="total",tenant="thrifty"}' in text
    assert "modelyard_cost_usd_total{" in text and "modelyard_time_to_first_token_seconds_bucket{" in text


def test_key_budget(server: LiveServer) -> None:
    assert admin(server, "/admin/tenants", {"id": "keyed"}).status_code == 201
    created = admin(server, "/admin/keys", {"tenant": "keyed", "budget": {"total": 0.02}}).json()
    assert created["budget"] == {"day": None, "month": None, "total": 0.02}
    client = sdk(server, created["key"])
    for _ in range(2):  # $0.009 each
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "x"}], max_tokens=4)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "x"}], max_tokens=4)
    assert info.value.body["type"] == "insufficient_quota" and "API key" in info.value.body["message"]  # type: ignore[index]
    other = admin(server, "/admin/keys", {"tenant": "keyed"}).json()["key"]  # the tenant itself has no budget
    assert sdk(server, other).chat.completions.create(model="priced", messages=[{"role": "user", "content": "x"}], max_tokens=4).choices
    assert admin(server, "/admin/keys", {"tenant": "keyed", "budget": {"day": -1}}).status_code == 400


def test_reservations_are_released_however_a_request_ends(server: LiveServer) -> None:
    assert admin(server, "/admin/tenants", {"id": "careful"}).status_code == 201
    assert admin(server, "/admin/tenants/careful/budget", {"total": 1.0}).status_code == 200
    key = admin(server, "/admin/keys", {"tenant": "careful"}).json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "broken", "messages": [{"role": "user", "content": "x"}], "max_tokens": 50, "n": 3}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers).status_code == 502  # choices 2 and 3 never start
    stream = {"model": "priced", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "n": 2, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=stream, headers=headers) as response:
        next(response.iter_lines())  # hang up after the first event: the second choice never starts
    left = spent = 0.0
    for _ in range(50):
        text = httpx.get(server.url + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith('modelyard_budget_remaining_usd{period="total",tenant="careful"}'))
        left = float(line.split()[-1])
        spent = next(r for r in admin(server, "/admin/usage?group_by=tenant").json()["data"] if r["tenant"] == "careful")["cost_usd"]
        if left == pytest.approx(1.0 - spent, abs=1e-6):
            break
        time.sleep(0.1)
    # Nothing is still reserved: what is not left was really spent (by whichever choices ran).
    assert left == pytest.approx(1.0 - spent, abs=1e-6)
    assert spent < 0.05


def test_rate_window_arithmetic() -> None:
    from modelyard.economics.ratelimit import RateLimiter

    limiter = RateLimiter()
    scopes = [("key:k", None, 100)]
    first, _, _ = limiter.check(scopes, 80, now=0.0)
    assert first is not None
    assert limiter.check(scopes, 30, now=1.0)[0] is None  # 80 reserved + 30 > 100
    limiter.settle(first, 10)  # it really used 10
    second, _, states = limiter.check(scopes, 30, now=2.0)
    assert second is not None and states["tokens:key:k"].remaining == 60
    limiter.settle(first, 999)  # settling again after the window moved on is harmless
    _, _, later = limiter.check(scopes, 1, now=62.5)  # both entries have expired
    assert later["tokens:key:k"].remaining == 99


class BruteForceWindows:
    """The rate limiter's rules stated plainly: sum every entry of the last 60 s at each check."""

    def __init__(self) -> None:
        self.entries: list[list[object]] = []  # [scope key, time, amount]

    def _alive(self, key: str, now: float) -> list[list[object]]:
        return [e for e in self.entries if e[0] == key and now - float(e[1]) < 60.0]  # type: ignore[arg-type]

    def check(self, scopes: list[tuple[str, int | None, int | None]], tokens: int, now: float) -> tuple[bool, float, dict[str, tuple[int, int, float]], list[list[object]]]:
        windows = [(f"{kind}:{name}", limit, amount) for name, rpm, tpm in scopes for kind, limit, amount in (("requests", rpm, 1), ("tokens", tpm, tokens)) if limit is not None]
        seen = {}
        for key, limit, amount in windows:
            alive = self._alive(key, now)
            used = sum(int(e[2]) for e in alive)  # type: ignore[call-overload]
            reset = 60.0 - (now - min(float(e[1]) for e in alive)) if alive else 0.0  # type: ignore[arg-type]
            seen[key] = (limit, amount, used, reset)
        retry = max((reset or 1.0 for limit, amount, used, reset in seen.values() if used + amount > limit), default=0.0)
        if retry:
            return False, retry, {k: (limit, max(0, limit - used), reset) for k, (limit, _, used, reset) in seen.items()}, []
        taken = []
        for key, (_, amount, _, _) in seen.items():
            entry: list[object] = [key, now, amount]
            self.entries.append(entry)
            if key.startswith("tokens:"):
                taken.append(entry)
        return True, 0.0, {k: (limit, max(0, limit - used - amount), reset) for k, (limit, amount, used, reset) in seen.items()}, taken


def test_rate_limiter_agrees_with_the_rules_stated_plainly() -> None:
    """Random arrivals, sizes, limits and settlements: the same admissions, retry-afters and header states as a brute-force window."""
    import random

    from modelyard.economics.ratelimit import RateLimiter

    rng = random.Random(7)
    refused = 0
    for _ in range(150):
        limiter, plain = RateLimiter(), BruteForceWindows()
        scopes = [("key:k", rng.choice([None, 2, 5]), rng.choice([None, 100, 300])), ("tenant:t", rng.choice([None, 4]), rng.choice([None, 250]))]
        now = 0.0
        for _ in range(40):
            now += rng.choice([0.0, 0.5, 3.0, 20.0, 61.0])
            tokens = rng.randint(1, 90)
            reservation, retry, states = limiter.check(scopes, tokens, now)
            admitted, plain_retry, plain_states, taken = plain.check(scopes, tokens, now)
            assert (reservation is not None, retry) == (admitted, pytest.approx(plain_retry))
            assert {k: (s.limit, s.remaining, pytest.approx(s.reset_s)) for k, s in states.items()} == plain_states
            refused += not admitted
            if reservation is not None:
                actual = rng.randint(0, 120)
                limiter.settle(reservation, actual)
                for entry in taken:
                    entry[2] = actual
    assert refused > 500  # the limits were reached often enough to test refusals
