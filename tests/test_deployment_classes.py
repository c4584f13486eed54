"""Deployments reserved for workload classes: the picker's rule with hand-built state, and the live server."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from modelyard.config import parse_config
from modelyard.pipeline.admission import scheduler_policy
from modelyard.pipeline.picker import DeploymentPicker

from .conftest import LiveServer, start_modelyard, write_config


class State:
    def __init__(self) -> None:
        self.outstanding: dict[str, int] = {}
        self.down: set[str] = set()

    def is_ready(self, name: str) -> bool:
        return name not in self.down


def split_fleet(base_url: str = "http://127.0.0.1:9/v1") -> dict[str, object]:
    deployments = [
        {"name": "fast", "backend": "openai", "base_url": base_url, "classes": ["interactive", "agent"]},
        {"name": "bulk", "backend": "openai", "base_url": base_url, "classes": ["batch", "background"]},
        {"name": "any", "backend": "openai", "base_url": base_url},
    ]
    return {"models": {"m": {"kind": "chat", "deployments": deployments}}}


def test_a_class_goes_to_its_own_deployments_and_to_any_when_they_are_down() -> None:
    config = parse_config(split_fleet())
    state = State()
    picker = DeploymentPicker(config, state, lambda: 0.0, random.Random(0))
    model = config.models[0]
    # "any" lists no class, so it takes every class; the busier sibling loses either way.
    state.outstanding = {"m/fast": 5, "m/bulk": 5, "m/any": 0}
    assert picker.pick(model, set(), workload="interactive") == "m/any"
    state.outstanding = {"m/fast": 0, "m/bulk": 0, "m/any": 3}
    assert picker.pick(model, set(), workload="interactive") == "m/fast"
    assert picker.pick(model, set(), workload="agent") == "m/fast"
    assert picker.pick(model, set(), workload="batch") == "m/bulk"
    assert picker.pick(model, set(), workload="embedding") == "m/any"  # no deployment lists it: the unrestricted one
    # Never a reserved deployment for another class while one of the class's own is healthy, even idle.
    state.outstanding = {"m/fast": 0, "m/bulk": 9, "m/any": 12}
    assert picker.pick(model, set(), workload="batch") == "m/bulk"
    assert picker.pick(model, set(), session="s1", workload="batch") == "m/bulk"
    assert not picker.untried_available(model, {"m/bulk", "m/any"}, workload="batch")
    # None of the class's deployments healthy: any healthy one rather than an outage.
    state.down = {"m/bulk", "m/any"}
    assert picker.pick(model, set(), workload="batch") == "m/fast"
    assert picker.untried_available(model, set(), workload="batch")


def test_no_slots_are_held_back_where_no_interactive_or_agent_work_may_come() -> None:
    config = parse_config(split_fleet() | {"scheduling": {"reserved_slots": 2}})
    reserved = {d.name: scheduler_policy(config, d).reserved_slots for d in config.models[0].deployments}
    assert reserved == {"m/fast": 2, "m/bulk": 0, "m/any": 2}


def served_by(server: LiveServer, workload: str, count: int) -> set[str]:
    seen = set()
    for i in range(count):
        r = httpx.post(f"{server.url}/v1/chat/completions", headers={"x-modelyard-class": workload},
                       json={"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 4}, timeout=30)
        assert r.status_code == 200, r.text
        seen.add(r.headers["x-modelyard-deployment"])
    return seen


def test_live_requests_reach_the_deployments_of_their_class(tmp_path: Path, fake_upstream: LiveServer) -> None:
    config = split_fleet(f"{fake_upstream.url}/v1")
    del config["models"]["m"]["deployments"][2]  # type: ignore[index]
    import yaml

    path = write_config(tmp_path / "fleet.yaml", yaml.safe_dump(config))
    server = start_modelyard(tmp_path, path)
    try:
        assert served_by(server, "interactive", 6) == {"m/fast"}
        assert served_by(server, "batch", 6) == {"m/bulk"}
        assert served_by(server, "agent", 3) == {"m/fast"}
    finally:
        server.stop()
