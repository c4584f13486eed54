"""The /ui dashboard in headless Chromium: it loads, shows data from real requests, and is screenshotted."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from .conftest import LiveServer, start_modelyard, write_config

MASTER = "sk-dashboard-master"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLEET = """
models:
  priced:
    kind: chat
    deployments:
      - {{backend: openai, base_url: '{url}/v1', upstream_model: fake, price: {{input_per_1m: 1000, output_per_1m: 2000}}}}
aliases:
  house:
    targets: [priced]
    strategy: rule
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("dashboard")
    live = start_modelyard(tmp, write_config(tmp / "fleet.yaml", FLEET.format(url=fake_upstream.url)), ["--data-dir", str(tmp / "data")], env={"MODELYARD_MASTER_KEY": MASTER})
    yield live
    live.stop()


def test_dashboard_shows_real_traffic(server: LiveServer, tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {MASTER}"}
    httpx.post(server.url + "/admin/tenants", json={"id": "acme-corp"}, headers=admin)
    httpx.post(server.url + "/admin/tenants/acme-corp/plan", json={"input_per_1m": 5000, "output_per_1m": 9000}, headers=admin)
    key = httpx.post(server.url + "/admin/keys", json={"tenant": "acme-corp"}, headers=admin).json()["key"]
    for _ in range(6):
        reply = httpx.post(server.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert reply.status_code == 200
    for _ in range(2):  # through an alias: the routing table shows it
        reply = httpx.post(server.url + "/v1/chat/completions", json={"model": "house", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert reply.status_code == 200
    agent = {"Authorization": f"Bearer {key}", "x-modelyard-session": "agent-run-7"}
    for _ in range(2):  # an agent session: the sessions table lists it, a click shows its steps
        reply = httpx.post(server.url + "/v1/chat/completions", json={"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                           headers=agent, timeout=30)
        assert reply.status_code == 200
    assert httpx.get(server.url + "/admin/dashboard").status_code == 401  # the data needs the master key
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/ui?key={MASTER}")
            page.wait_for_selector("#tenants tbody tr", timeout=15_000)
            tenants = page.inner_text("#tenants")
            assert "acme-corp" in tenants
            assert "priced/0" in page.inner_text("#deployments")
            page.wait_for_selector("#routes tbody tr", timeout=15_000)
            routes = page.inner_text("#routes tbody")
            assert "house" in routes and "priced" in routes and "100%" in routes and "rule 2" in routes
            assert page.locator("#requests-chart path").count() >= 1
            assert "acme-corp" in page.inner_text("#cost-legend")
            assert "updated" in page.inner_text("#status")
            page.wait_for_selector("#sessions tbody tr", timeout=15_000)
            assert "agent-run-7" in page.inner_text("#sessions tbody")
            page.click("#sessions tbody tr >> text=agent-run-7")
            page.wait_for_selector("#session-detail pre", timeout=15_000)
            detail = page.inner_text("#session-detail")
            assert "agent-run-7: 2 steps" in detail and "2. priced -> priced" in detail
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if keep := os.environ.get("MODELYARD_KEEP_SCREENSHOT"):
        shutil.copy(shot, keep)  # how bench/results/dashboard.png was made


def test_route_shares_from_ledger_rows() -> None:
    from modelyard.observe.dashboard import route_kind, route_shares

    rows = [
        {"requested_model": "auto", "served_model": "small", "route": "learned:target=0.7; predicted_quality=0.412"},
        {"requested_model": "auto", "served_model": "small", "route": "learned:target=0.7; predicted_quality=0.388"},
        {"requested_model": "auto", "served_model": "coder", "route": "intent:code:similarity=0.91"},
        {"requested_model": "auto", "served_model": "coder", "route": "rule:tools"},
        {"requested_model": "small", "served_model": "small", "route": "requested"},  # a named model: not routed
        {"requested_model": "auto", "served_model": None, "route": None},  # refused before routing
    ]
    assert route_kind("cascade; escalated=big") == "cascade" and route_kind("requested") == route_kind("") == ""
    assert route_shares(rows) == [
        {"alias": "auto", "model": "coder", "requests": 2, "share": 0.5, "by": {"intent": 1, "rule": 1}},
        {"alias": "auto", "model": "small", "requests": 2, "share": 0.5, "by": {"learned": 2}},
    ]


def test_minute_series_counts_cache_hits_and_savings() -> None:
    from modelyard.observe.dashboard import minute_series

    base = {"tenant": "t", "requested_model": "m", "served_model": "m", "route": "", "latency_ms": 1.0, "status": 200, "cost_usd": 0.0, "revenue_usd": 0.0}
    rows = [base | {"ts": 60.0, "cache": "hit", "saved_usd": 0.25}, base | {"ts": 61.0, "cache": "miss", "saved_usd": 0.0},
            base | {"ts": 62.0, "cache": "bypass", "saved_usd": 0.0}, base | {"ts": 125.0, "cache": None, "saved_usd": None}]
    series = minute_series(rows, 60.0, 2)
    assert series["cache"] == {"lookups": 2, "hits": 1, "saved_usd": 0.25}
    assert series["cache_hit_rate"] == [0.5, None]
    assert series["cache_saved_usd"] == [0.25, 0.0]
