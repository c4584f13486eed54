"""The planner: the pure failover policy, the engine models, the simulator, the replica search, and
the live server and the simulator making the same decisions request by request."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import FleetConfig, ModelConfig, load_config, parse_config
from modelyard.errors import ContextWindowExceeded, InvalidRequest, NotReady, Overloaded, UpstreamError
from modelyard.pipeline.failover import FailoverInputs, Pause, TryDeployment, failover
from modelyard.pipeline.picker import DeploymentPicker
from modelyard.planning.engine_model import EngineModel, engine_from_profile
from modelyard.planning.plan import PlanError, parse_objective, parse_price_plan, parse_split, plan_replicas, simulate, summarize_run
from modelyard.planning.replicas import Replica, Sequence
from modelyard.planning.simulate import SimOptions, Simulation
from modelyard.planning.traces import TraceRequest, amplify, to_jsonl
from modelyard.routing.balancer import DeploymentView, choose

from .conftest import LiveServer, start_modelyard, write_config

NOW = 0.0


def fleet(text: dict) -> FleetConfig:  # type: ignore[type-arg]
    return parse_config(text)


class FixedPicker:
    """A picker over hand-set availability: deployments are tried in order."""

    def __init__(self, config: FleetConfig, down: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.config = config
        self.down = down

    def pick(self, model: ModelConfig, exclude: set[str], session: str | None = None, workload: str = "interactive") -> str | None:
        names = [d.name for d in model.deployments if d.name not in self.down]
        fresh = [n for n in names if n not in exclude] or names
        return fresh[0] if fresh else None

    def untried_available(self, model: ModelConfig, tried: set[str], workload: str = "interactive") -> bool:
        return any(d.name not in tried and d.name not in self.down for d in model.deployments)

    def unavailable(self, model: ModelConfig) -> NotReady:
        return NotReady(f"{model.name} unavailable")


TWO_MODELS = {"models": {
    "m": {"kind": "chat", "context_window": 100, "fallbacks": ["big"], "retry": {"max_attempts": 3},
          "deployments": [{"name": "x", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                          {"name": "y", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]},
    "big": {"kind": "chat", "context_window": 1000, "deployments": [{"name": "z", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]},
}}


def steps_of(config: FleetConfig, errors: list[Exception | None], picker: FixedPicker | None = None) -> tuple[list[object], Exception | None]:
    """Drive the policy with one scripted error per try; returns the steps and the final error (None: a try succeeded)."""
    gen = failover(config, picker or FixedPicker(config), FailoverInputs(["m", "big"], deadline=100.0), lambda: NOW, random.Random(1))
    seen: list[object] = []
    try:
        step = next(gen)
        script = iter(errors)
        while True:
            seen.append(step)
            if isinstance(step, Pause):
                step = gen.send(None)
                continue
            error = next(script)
            if error is None:
                return seen, None
            step = gen.send(error)  # type: ignore[arg-type]
    except Exception as final:  # noqa: BLE001 - the policy's verdict
        return seen, final


def tried(steps: list[object]) -> list[str]:
    return [s.deployment if isinstance(s, TryDeployment) else "pause" for s in steps]


def test_failover_moves_to_a_sibling_then_the_fallback_and_gives_up_with_the_last_error() -> None:
    config = fleet(TWO_MODELS)
    steps, final = steps_of(config, [UpstreamError(str(i)) for i in range(6)])
    # A fresh sibling needs no wait; the same deployment again only after a backoff; then the fallback gets its own tries.
    assert tried(steps) == ["m/x", "m/y", "pause", "m/x", "big/z", "pause", "big/z", "pause", "big/z"]
    assert isinstance(final, UpstreamError) and str(final) == "5"


def test_failover_stops_at_once_on_a_bad_request_and_skips_small_fallbacks_on_overflow() -> None:
    config = fleet(TWO_MODELS)
    steps, final = steps_of(config, [InvalidRequest("bad")])
    assert tried(steps) == ["m/x"] and isinstance(final, InvalidRequest)
    steps, final = steps_of(config, [ContextWindowExceeded("long"), None])
    assert tried(steps) == ["m/x", "big/z"] and final is None


def test_an_overloaded_model_with_no_untried_sibling_hands_over_without_backoff() -> None:
    config = fleet(TWO_MODELS)
    steps, final = steps_of(config, [Overloaded("full", retry_after=5), Overloaded("full", retry_after=5), Overloaded("full", retry_after=5)])
    assert tried(steps) == ["m/x", "m/y", "big/z"]  # no pause, no second round on m
    assert isinstance(final, Overloaded)
    steps, final = steps_of(config, [None], FixedPicker(config, down={"m/x", "m/y"}))
    assert tried(steps) == ["big/z"] and final is None


def test_picker_fast_path_decides_as_the_balancer_does() -> None:
    config = fleet({"models": {"m": {"kind": "chat", "deployments": [
        {"name": str(i), "backend": "openai", "base_url": "http://127.0.0.1:9/v1"} for i in range(6)]}}})

    class State:
        def __init__(self) -> None:
            self.outstanding: dict[str, int] = {}

        def is_ready(self, name: str) -> bool:
            return True

    state = State()
    picker = DeploymentPicker(config, state, lambda: NOW, random.Random(0))
    model = config.models[0]
    rng = random.Random(7)
    for _ in range(200):
        state.outstanding = {d.name: rng.randrange(4) for d in model.deployments}
        views = [DeploymentView(d.name, outstanding=state.outstanding[d.name]) for d in model.deployments]
        assert picker.pick(model, set()) == choose("least_outstanding", views, random.Random(0))


def test_engine_model_interpolates_and_extrapolates_token_intervals() -> None:
    engine = engine_from_profile({"prefill": {"fixed_s": 0.1, "per_token_s": 0.001}, "decode_interval_s": {"1": 0.02, "2": 0.03, "4": 0.05}}, "batched")
    assert engine.interval(1) == 0.02 and engine.interval(3) == pytest.approx(0.04) and engine.interval(6) == pytest.approx(0.07)
    assert engine.prefill_s(100) == pytest.approx(0.2)  # no measured points: the fitted line
    measured = engine_from_profile({"prefill": {"fixed_s": -0.3, "per_token_s": 0.0078, "points": [[46, 0.15], [46, 0.13], [94, 0.41], [286, 1.7], [286, 1.8]]},
                                    "decode_interval_s": {"1": 0.01}}, "batched")
    # Superlinear prefill: the measured medians, linear between them, not the line (negative below 41 tokens).
    assert measured.prefill_s(46) == pytest.approx(0.14) and measured.prefill_s(286) == pytest.approx(1.75)
    assert measured.prefill_s(70) == pytest.approx((0.14 + 0.41) / 2) and measured.prefill_s(10) == pytest.approx(0.14)
    assert measured.prefill_s(400) > 1.75


def test_a_replica_shares_steps_between_a_prompt_and_the_decoding_sequences() -> None:
    engine = EngineModel("batched", 0.0, 0.001, ((1, 0.02), (2, 0.03)), step_tokens=10)
    replica = Replica(engine)
    lone = Sequence(1, prefill_left_s=0.0, tokens_left=10)
    replica.add(lone, 0.0)
    at, who = replica.next_event()
    assert who is lone and at == pytest.approx(0.2)  # 10 tokens at 20 ms alone
    replica.advance(0.1)
    prompt = Sequence(2, prefill_left_s=0.05, tokens_left=3)  # 50 prompt tokens
    replica.add(prompt, 0.1)
    at, who = replica.next_event()
    # A mixed step: 20 ms of decode + 10 prompt tokens x 1 ms; the prompt gets 10/30 of the time.
    assert who is prompt and at == pytest.approx(0.1 + 0.05 * 3)


def test_amplify_multiplies_the_traffic_over_the_same_span() -> None:
    rows = [TraceRequest(float(t), 10, 5) for t in range(100)]
    ten = amplify(rows, 10)
    assert len(ten) == 1000 and ten[-1].arrival_s == 99.0 and ten[0].arrival_s == 0.0
    assert [r.arrival_s for r in ten] == sorted(r.arrival_s for r in ten)
    assert abs(len(amplify(rows, 2.5)) - 250) <= 1 and abs(len(amplify(rows, 0.5)) - 50) <= 1


@pytest.mark.parametrize(("text", "message"), [("p99_ttft=2", "name must"), ("p98_ttft_s=1", "name must"), ("p99_ttft_s", "NAME=NUMBER"), ("p99_ttft_s=x", "NAME=NUMBER")])
def test_bad_objectives_are_named(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_objective(text)


def test_objectives_price_plans_and_splits_parse() -> None:
    o = parse_objective("interactive_p99_ttft_s=2")
    assert (o.metric, o.quantile, o.workload, o.limit) == ("ttft", 99, "interactive", 2.0)
    assert parse_objective("max_rejected_rate=0.01").metric == "rejected_rate"
    tenant, plan = parse_price_plan("acme=1,2,0.001")
    assert tenant == "acme" and (plan.input_per_1m, plan.output_per_1m, plan.per_request) == (1.0, 2.0, 0.001)
    assert parse_split("auto=a:0.7,b:0.3") == ("auto", {"a": 0.7, "b": 0.3})
    for bad in ("acme=1", "=1,2"):
        with pytest.raises(PlanError):
            parse_price_plan(bad)
    with pytest.raises(PlanError):
        parse_split("auto=a")


LOCAL = {"models": {"m": {"kind": "chat", "deployments": [{"name": "0", "backend": "llamacpp_server", "model_file": "builtin:smollm2-135m", "parallel": 2,
                                                              "price": {"replica_hour": 1.0}}]}}}
STEADY = [TraceRequest(i * 0.25, 100, 20, model="m") for i in range(400)]  # 4 requests/s, 100 s


def local_engine() -> dict[str, EngineModel]:
    return {"m/0": EngineModel("batched", 0.05, 0.002, ((1, 0.02), (2, 0.03)))}


def test_simulation_queues_and_rejects_by_the_real_scheduler() -> None:
    config = fleet(LOCAL)
    records = Simulation(config, local_engine(), SimOptions()).run(STEADY)
    # ~0.82 s of work per request at 4/s on 2 slots: far over capacity, so the bounded queue refuses work.
    assert {r.status for r in records} == {200, 429}
    assert all(r.ttft_s is not None and r.ttft_s > 0.25 for r in records if r.status == 200)


def test_the_simulator_sends_each_class_to_its_own_deployments() -> None:
    engine = {"prefill": {"fixed_s": 0.05, "per_token_s": 0.001}, "decode_interval_s": {"1": 0.02}}
    config = fleet({"models": {"m": {"kind": "chat", "deployments": [
        {"name": "live", "backend": "llamacpp_server", "model_file": "builtin:smollm2-135m", "parallel": 2, "classes": ["interactive", "agent"]},
        {"name": "bulk", "backend": "llamacpp_server", "model_file": "builtin:smollm2-135m", "parallel": 2, "classes": ["batch"]}]}}})
    engines = {"m/live": engine_from_profile(engine, "batched"), "m/bulk": engine_from_profile(engine, "batched")}
    trace = [TraceRequest(i * 0.5, 50, 5, model="m", workload="batch" if i % 3 else "interactive") for i in range(30)]
    records = Simulation(config, engines, SimOptions()).run(trace)
    served = {(r.workload, r.deployment) for r in records if r.status == 200}
    assert served == {("interactive", "m/live"), ("batch", "m/bulk")}


def test_the_search_finds_the_fewest_replicas_that_meet_the_objectives() -> None:
    config, engines = fleet(LOCAL), local_engine()
    objectives = [parse_objective("p99_ttft_s=1.5"), parse_objective("max_rejected_rate=0")]
    plan = plan_replicas(config, engines, STEADY, objectives, SimOptions())
    n = plan.run.replicas["m/0"]
    assert plan.met == {"m": True} and n > 1
    fewer = simulate(config, engines, STEADY, {"m/0": n - 1}, SimOptions())
    assert not all(o.met(fewer.records) for o in objectives)
    summary = summarize_run(config, plan.run, objectives)
    hours = summary["span_s"] / 3600
    assert summary["cost_usd"] == pytest.approx(n * 1.0 * hours, rel=1e-3)  # every replica for the whole span
    assert set(summary["cost_by_tenant_usd"]) == {"default"}


def test_plan_command_prints_a_table_and_json(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "m__0.json").write_text(json.dumps({"prefill": {"fixed_s": 0.05, "per_token_s": 0.002}, "decode_interval_s": {"1": 0.02, "2": 0.03}}))
    (tmp_path / "fleet.json").write_text(json.dumps(LOCAL))
    trace = tmp_path / "t.jsonl"
    trace.write_text(to_jsonl(STEADY))
    html = tmp_path / "plan.html"
    run = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "plan", "--trace", str(trace), "--config", str(tmp_path / "fleet.json"), "--profiles", str(profiles),
         "--scale", "2", "--slo", "p99_ttft_s=2", "--price-plan", "*=100,200", "--what-if", "burst", "--html", str(html), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    for key in ("requests", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "throughput_rps", "rejected_rate", "cost_usd", "replicas", "margin_usd"):
        assert key in summary, key
    assert summary["requests"] == 800 and summary["replicas"]["m/0"] >= 2
    assert [r["what_if"] for r in summary["what_ifs"]] == ["as planned", "2x burst"]
    assert "<svg" in html.read_text() and "replicas" in run.stdout


def test_plan_refuses_missing_profiles_clearly(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(to_jsonl(STEADY[:5]))
    run = subprocess.run([sys.executable, "-m", "modelyard.cli", "plan", "--trace", str(trace), "--profiles", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "modelyard profile" in run.stderr and "Traceback" not in run.stderr


# -- the same decisions, live and simulated --------------------------------------------------------------
LATENCY_S = 0.4


def decisions_fleet(url: str) -> str:
    deployment = "{{name: {n}, backend: openai, base_url: '{u}/v1', upstream_model: fake, max_concurrency: 1, max_queue: 1, headers: {{x-fake-latency-ms: '{ms}'}}}}"
    d = lambda n: deployment.format(n=n, u=url, ms=int(LATENCY_S * 1000))  # noqa: E731
    return f"""
models:
  small:
    kind: chat
    fallbacks: [big]
    deployments: [{d("a")}, {d("b")}]
  big:
    kind: chat
    deployments: [{d("a")}]
aliases:
  auto: {{targets: [small, big], strategy: rule, long_prompt_chars: 400}}
scheduling: {{ttft_objective_s: {{interactive: 60, agent: 60}}, reserved_slots: 0}}
"""


def decisions_trace() -> list[TraceRequest]:
    gap = 0.08
    burst1 = [TraceRequest(i * gap, 8, 2, model="small") for i in range(5)]  # two run, one queues, one moves over, one falls back
    burst2 = [TraceRequest(1.5, 8, 2, model="auto"), TraceRequest(1.5 + gap, 8, 2, model="auto")]  # short: the cheap model
    burst2 += [TraceRequest(1.5 + gap * k, 200, 2, model="auto") for k in (2, 3, 4)]  # long: the strong one, then its queue, then a 429
    burst3 = [TraceRequest(3.0 + gap * k, 8, 2, model="small", workload="batch") for k in range(3)]
    burst3 += [TraceRequest(3.0 + gap * 3, 8, 2, model="small")]  # interactive: sheds the queued batch request, which moves to b
    return burst1 + burst2 + burst3


@pytest.fixture(scope="module")
def decisions_server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: LiveServer) -> Iterator[tuple[LiveServer, Path]]:
    tmp = tmp_path_factory.mktemp("decisions")
    config = write_config(tmp / "fleet.yaml", decisions_fleet(fake_upstream.url))
    server = start_modelyard(tmp, config)
    yield server, config
    server.stop()


def test_live_server_and_simulator_make_the_same_decisions(tmp_path: Path, decisions_server: tuple[LiveServer, Path]) -> None:
    server, config_path = decisions_server
    trace = decisions_trace()
    trace_file = tmp_path / "t.jsonl"
    trace_file.write_text(to_jsonl(trace))
    outcomes = tmp_path / "live.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "replay", "--trace", str(trace_file), "--base-url", server.url + "/v1", "--outcomes", str(outcomes)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    live = [json.loads(line) for line in outcomes.read_text().splitlines()]
    config = load_config(str(config_path))
    engine = EngineModel("independent", LATENCY_S, 0.0, ((1, 0.0005),))
    records = Simulation(config, dict.fromkeys(["small/a", "small/b", "big/a"], engine), SimOptions()).run(trace)

    def decision(status: int, model: str, deployment: str) -> tuple[int, str, str]:
        return (status, model, deployment) if status == 200 else (status, "", "")

    live_decisions = [decision(o["status"], o["model"], o["deployment"]) for o in live]
    simulated = [decision(r.status, r.model, r.deployment) for r in records]
    assert live_decisions == simulated
    # The trace exercises every kind of decision: both replicas, a queue, a move, a fallback, a route, a 429, a shed.
    assert {d[2] for d in simulated if d[0] == 200} == {"small/a", "small/b", "big/a"} and (429, "", "") in simulated
    assert simulated[3] == (200, "small", "small/b") and simulated[4] == (200, "big", "big/a")
    assert simulated[10:14] == [(200, "small", "small/a"), (200, "small", "small/b"), (200, "small", "small/b"), (200, "small", "small/a")]
    # Fixed-latency upstreams: the simulated waits are the live ones, give or take the network.
    for o, r in zip(live, records, strict=True):
        if o["status"] == 200:
            assert r.ttft_s == pytest.approx(o["ttft_s"], abs=0.15)


def test_a_lone_request_takes_the_profiled_prefill_of_its_prompt_and_template_then_its_tokens() -> None:
    profile = {"prefill": {"fixed_s": 0.0, "per_token_s": 0.0, "points": [[40, 0.1], [140, 0.5]]}, "decode_interval_s": {"1": 0.02}, "prompt_overhead_tokens": 40}
    engine = engine_from_profile(profile, "batched")
    assert engine.prompt_overhead_tokens == 40
    records = Simulation(fleet(LOCAL), {"m/0": engine}, SimOptions(gateway_overhead_s=0.0)).run([TraceRequest(0.0, 100, 11, model="m")])
    assert records[0].ttft_s == pytest.approx(0.5)  # 100 trace tokens + 40 of template = the 140-token point
    assert records[0].e2e_s == pytest.approx(0.5 + 10 * 0.02)


def test_the_mixed_factor_is_what_prompts_beside_running_answers_measured() -> None:
    profile = {"prefill": {"fixed_s": 0.0, "per_token_s": 0.0, "points": [[48, 0.2], [96, 0.46]]}, "decode_interval_s": {"1": 0.011, "4": 0.04}}
    alone = engine_from_profile(profile, "batched")
    assert alone.mixed_factor == 1.0  # nothing measured: a prompt costs beside answers what it costs alone
    # Measurements made by a 1.2x engine: two steps of interval(k) plus 1.2x the lone prefill.
    mixed = [[k, 96, 2 * alone.interval(k) + 1.2 * 0.46] for k in (1, 2, 3)] + [[3, 48, alone.interval(3) + 1.2 * 0.2]]
    engine = engine_from_profile(profile | {"mixed_prefill": mixed}, "batched")
    assert engine.mixed_factor == pytest.approx(1.2)
    replica = Replica(engine)
    replica.add(Sequence(1, prefill_left_s=0.0, tokens_left=100), 0.0)
    prompt = Sequence(2, prefill_left_s=0.46, tokens_left=1, prompt_token_s=0.46 / 96)
    replica.add(prompt, 0.0)
    at, who = replica.next_event()
    assert who is prompt and at == pytest.approx(2 * alone.interval(1) + 1.2 * 0.46, rel=0.05)
