"""The planner against reality, and its speed.

    .venv/bin/python bench/planner.py [--slice-s 360] [--target-busy 0.75] [--runs 1] [--speed-only | --resimulate | --drift]

1. Profile: ``modelyard serve`` on the embedded fleet, and ``modelyard
   profile --base-url`` measures both chat models through it (prefill by
   prompt length, token interval by batch size; gateway included). Saved
   under bench/results/profiles/.
2. Load: for each Azure trace (conversation -> smollm2-135m from its start,
   code -> qwen2.5-0.5b from its fourth minute), tokens scaled down (0.05,
   0.02) so one engine thread serves hundreds of requests, arrivals
   time-scaled so that the simulator predicts the model's engine busy at most
   ``--target-busy`` of the time and refusing at most ``--max-rejected``, the
   slice long enough for ``--slice-s`` seconds of real time.
3. Reality: on the same server, ``modelyard replay``
   sends each slice (``--ignore-eos``, so every answer has the trace's length)
   and records every request.
4. Simulation: the same slices through ``modelyard plan``'s simulator with the
   profiles. Reported per trace: TTFT p50 and p99, end-to-end p50, throughput
   and rejection rate, measured and simulated, and the error of each
   (``|sim - real| / real``; for a rate that is 0 in reality, the absolute
   difference in points).
   With ``--runs N`` steps 1-4 are repeated N times (each run profiles the
   engines again, so the profile's own run-to-run noise is in the spread);
   ``error_pct`` is then the median of the runs' errors, and
   ``error_pct_runs`` holds every run's.
   With ``--drift`` (one run; writes bench/results/planner-drift.json and leaves
   planner.json alone) each model is profiled again just before and just after
   its replay, and the slice is simulated with those profiles too: when the real
   figures sit between the two simulations, the engine's speed moving on this
   shared machine explains the error; when they sit outside both, the model does.
5. Speed: one simulation of the whole conversation trace (one hour) at 10x
   its traffic (about 194,000 requests) on a fleet the planner sized for it;
   median and range of ``--repeats`` runs.

Writes bench/results/planner.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ENV, RESULTS, ROOT, commit, free_port, machine, start, stop, table, write_result  # noqa: E402

from modelyard.config.defaults import default_fleet  # noqa: E402
from modelyard.planning.plan import DEFAULT_OBJECTIVES, load_engines, plan_replicas, simulate, summarize_run  # noqa: E402
from modelyard.planning.report import records_jsonl  # noqa: E402
from modelyard.planning.simulate import SimOptions  # noqa: E402
from modelyard.planning.traces import TraceRequest, amplify, parse_trace, scale, to_jsonl, window  # noqa: E402

TRACES = ROOT.parent / "shared" / "data" / "traces"
# (name, trace, model, token scale): prompts of ~58 (conversation: mean 1,155 x 0.05) and ~41 tokens (code: mean 2,048 x 0.02)
# plus the chat template, so that one engine thread serves hundreds of requests per slice.
# The code trace is off and on (63 requests in its first minute, none in the next two, 531 in the fourth): its slice
# starts at the fourth minute.
CASES = (("conversation", "azure_llm_2023_conv.csv", "smollm2-135m", 0.05, 0.0), ("code", "azure_llm_2023_code.csv", "qwen2.5-0.5b", 0.02, 180.0))
OVERHEAD_S = 0.0  # the profiles are measured through the gateway, so its time is in them already
TOKEN_SCALE = 0.05  # the speed run's (the conversation trace)
COMPARED = ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "throughput_rps", "rejected_rate")
PROFILES = RESULTS / "profiles"
OUTCOMES = RESULTS / "planner-outcomes"  # every request, replayed and simulated, for a closer look
DRIFT_NAME = "planner-drift"  # --drift: each replayed model profiled again just before and just after its replay


def profile(models: list[str], base_url: str, out: Path = PROFILES) -> None:
    """Each model measured through the running gateway: what a client sees, gateway and engine together."""
    for model in models:
        run = subprocess.run([sys.executable, "-m", "modelyard.cli", "profile", "--model", model, "--out", str(out), "--repeats", "3", "--base-url", base_url],
                             env=ENV, cwd=ROOT, capture_output=True, text=True, check=False)
        print(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "", file=sys.stderr)
        if run.returncode != 0:
            raise SystemExit(f"profile {model} failed:\n{run.stderr}")


def busy(model: str, trace: list[TraceRequest], options: SimOptions, profiles: Path = PROFILES) -> tuple[float, float]:
    """(the model's engine's simulated busy share, the simulated rejection rate)."""
    config = default_fleet()
    result = simulate(config, load_engines(config, profiles), trace, {}, options)
    deployment = next(d.name for m in config.models if m.name == model for d in m.deployments)
    return result.utilization[deployment], sum(1 for r in result.records if r.status != 200) / max(1, len(result.records))


def the_slice(requests: list[TraceRequest], start_s: float, window_s: float, time_scale: float, token_scale: float) -> list[TraceRequest]:
    return scale(window(requests, start_s, window_s), time_scale, token_scale)


def choose_slice(requests: list[TraceRequest], model: str, target: float, slice_s: float, max_rejected: float, token_scale: float,
                 start_s: float, profiles: Path = PROFILES) -> tuple[float, float, float]:
    """(window in trace seconds, time scale, predicted busy share): the simulated engine at most ``target`` busy and
    refusing at most ``max_rejected`` of the requests (a bursty trace overflows the queue long before its engine is
    busy all the time), for about ``slice_s`` real seconds."""
    options = SimOptions(default_model=model, token_scale=token_scale, gateway_overhead_s=OVERHEAD_S)
    time_scale, window_s = 1.0, slice_s
    rounds = 4  # the window depends on the scale and the scale on the window's traffic: a few rounds settle both
    for round_no in range(rounds):
        lo, hi = 0.02, 50.0
        piece = the_slice(requests, start_s, window_s, 1.0, token_scale)
        for _ in range(20):  # bisect the time scale on the simulated busy share
            mid = (lo * hi) ** 0.5
            share, rejected = busy(model, scale(piece, mid, 1.0), options, profiles)
            if share > target or rejected > max_rejected:
                lo = mid
            else:
                hi = mid
        # hi is a scale the simulator accepted for this very window; the last round keeps both, so the slice replayed
        # is one that was checked (recomputing the window after the last bisection let a bursty trace's longer window
        # take in a burst: one code slice ran 53% refused).
        time_scale = hi
        if round_no < rounds - 1:
            window_s = slice_s / time_scale
    return window_s, time_scale, busy(model, the_slice(requests, start_s, window_s, time_scale, token_scale), options, profiles)[0]


def replay(base_url: str, model: str, trace: list[TraceRequest], work: Path, name: str, outcomes: Path = OUTCOMES) -> dict[str, Any]:
    path = work / f"{name}.jsonl"
    path.write_text(to_jsonl(trace))
    run = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "replay", "--trace", str(path), "--base-url", base_url, "--model", model, "--ignore-eos",
         # The slice is scaled already: scaling it again in replay would send prompts 20x too short.
         "--outcomes", str(outcomes / f"{name}-real.jsonl"), "--json"],
        env=ENV, cwd=ROOT, capture_output=True, text=True, check=False, timeout=3600,
    )
    if run.returncode != 0:
        raise SystemExit(f"replay failed:\n{run.stderr}")
    summary: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return summary


def simulated(model: str, trace: list[TraceRequest], name: str, token_scale: float, profiles: Path = PROFILES, label: str = "sim",
              outcomes: Path = OUTCOMES) -> dict[str, Any]:
    config = default_fleet()
    options = SimOptions(default_model=model, token_scale=token_scale, gateway_overhead_s=OVERHEAD_S)
    result = simulate(config, load_engines(config, profiles), trace, {}, options)
    (outcomes / f"{name}-{label}.jsonl").write_text(records_jsonl(result.records))
    return summarize_run(config, result, DEFAULT_OBJECTIVES)


def errors(real: dict[str, Any], sim: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for key in COMPARED:
        r, s = real.get(key), sim.get(key)
        if r is None or s is None:
            out[key] = {"real": r, "sim": s, "error_pct": None}
        elif r == 0:
            out[key] = {"real": r, "sim": s, "error_pct": None, "abs_diff_points": round(abs(s - r) * 100, 2)}
        else:
            out[key] = {"real": r, "sim": s, "error_pct": round(abs(s - r) / abs(r) * 100, 1)}
    return out


def profiled_again(name: str, when: str, model: str, base_url: str, first: Path, drift: Path) -> Path:
    """A copy of the run's ``first`` profiles with ``model`` measured again now (``when``: before or after the replay), under ``drift``."""
    where = drift / f"{name}-{when}"
    where.mkdir(parents=True, exist_ok=True)
    for saved in first.glob("*.json"):
        (where / saved.name).write_text(saved.read_text())
    profile([model], base_url, where)
    return where


def drift_of(model: str, real: dict[str, Any], chosen: list[TraceRequest], name: str, token_scale: float, dirs: dict[str, Path],
             drift: Path) -> dict[str, Any]:
    """The slice simulated with the profiles measured just before and just after its replay, and what moved in them."""
    out: dict[str, Any] = {}
    for when, where in dirs.items():
        sim = simulated(model, chosen, name, token_scale, where, f"sim-{when}", drift)
        measured = json.loads(next(where.glob(f"{model}__*.json")).read_text())
        out[when] = {"sim": sim, "errors": errors(real, sim), "decode_interval_s": measured["decode_interval_s"],
                     "prefill_per_token_s": measured["prefill"]["per_token_s"], "measured_at": measured["measured_at"]}
    return out


def validate(target: float, slice_s: float, max_rejected: float, cases: list[str], reuse_profiles: bool, drift: Path | None = None) -> dict[str, Any]:
    """One validation run; with ``drift`` (a directory), also the profiles just before and after each replay, kept there."""
    results: dict[str, Any] = {}
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = start(["serve", "--port", str(port)], work / "serve.log", f"http://127.0.0.1:{port}/readyz", timeout=300)
        # --drift keeps the saved profiles as they are: its first profile goes beside the before and after ones.
        first = drift / "start" if drift else PROFILES
        if drift:
            first.mkdir(parents=True, exist_ok=True)
            for saved in PROFILES.glob("*.json"):
                (first / saved.name).write_text(saved.read_text())
        try:
            if not reuse_profiles:
                profile([case[2] for case in CASES if case[0] in cases], f"http://127.0.0.1:{port}/v1", first)
            slices = {}
            for name, file, model, token_scale, start_s in CASES:
                if name not in cases:
                    continue
                requests = parse_trace((TRACES / file).read_text())
                window_s, time_scale, predicted = choose_slice(requests, model, target, slice_s, max_rejected, token_scale, start_s, first)
                chosen = the_slice(requests, start_s, window_s, time_scale, token_scale)
                slices[name] = (model, chosen, window_s, time_scale, predicted, token_scale, start_s)
                print(f"{name}: {len(chosen)} requests over {chosen[-1].arrival_s:.0f} s (time scale {time_scale:.3f}), predicted busy {predicted:.0%}",
                      file=sys.stderr)
            for name, (model, chosen, window_s, time_scale, predicted, token_scale, start_s) in slices.items():
                base = f"http://127.0.0.1:{port}/v1"
                dirs = {"before": profiled_again(name, "before", model, base, first, drift)} if drift else {}
                outcomes = drift or OUTCOMES  # a --drift run leaves the validation's outcome files as they are
                replay(base, model, [TraceRequest(0.0, 40, 8)] * 2, work, f"{name}-warmup", outcomes)
                real = replay(base, model, chosen, work, name, outcomes)
                if drift:
                    dirs["after"] = profiled_again(name, "after", model, base, first, drift)
                sim = simulated(model, chosen, name, token_scale, first, outcomes=outcomes)
                results[name] = {
                    "model": model, "requests": len(chosen), "start_s": start_s, "window_s": window_s, "time_scale": time_scale,
                    "token_scale": token_scale, "predicted_busy": round(predicted, 3), "simulated_busy": sim["utilization"], "real": real, "sim": sim,
                    "errors": errors(real, sim),
                }
                if drift:
                    results[name]["drift"] = drift_of(model, real, chosen, name, token_scale, dirs, drift)
                print(f"{name}: replayed", file=sys.stderr)
        finally:
            stop(server)
    return results


def resimulate(previous: dict[str, Any]) -> dict[str, Any]:
    """The saved replays against a new simulation of the same slices (after a change to the engine model or the profiles)."""
    validation = previous.get("validation") or {}
    files = {case[0]: case[1] for case in CASES}
    for name, v in validation.items():
        chosen = the_slice(parse_trace((TRACES / files[name]).read_text()), v.get("start_s", 0.0), v["window_s"], v["time_scale"], v["token_scale"])
        assert len(chosen) == v["requests"], (name, len(chosen), v["requests"])
        v["sim"] = simulated(v["model"], chosen, name, v["token_scale"])
        v["simulated_busy"] = v["sim"]["utilization"]
        v["errors"] = errors(v["real"], v["sim"])
    return dict(validation)


def speed(repeats: int) -> dict[str, Any]:
    config = default_fleet()
    engines = load_engines(config, PROFILES)
    hour = scale(parse_trace((TRACES / "azure_llm_2023_conv.csv").read_text()), 1.0, TOKEN_SCALE)
    ten = amplify(hour, 10)
    options = SimOptions(default_model="smollm2-135m", token_scale=TOKEN_SCALE, gateway_overhead_s=OVERHEAD_S)
    started = time.perf_counter()
    planned = plan_replicas(config, engines, ten, DEFAULT_OBJECTIVES, options)
    plan_s = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        simulate(config, engines, ten, planned.run.replicas, options)
        times.append(time.perf_counter() - t)
    summary = summarize_run(config, planned.run, DEFAULT_OBJECTIVES)
    return {"requests": len(ten), "replicas": planned.run.replicas, "objectives_met": planned.met, "simulations_in_plan": planned.runs,
            "plan_seconds": round(plan_s, 1), "sim_seconds": [round(t, 2) for t in times], "sim_seconds_median": round(statistics.median(times), 2),
            "ttft_p99_ms": summary["ttft_p99_ms"], "cost_per_1k_requests_usd": summary["cost_per_1k_requests_usd"]}


def report(validation: dict[str, Any], fast: dict[str, Any]) -> None:
    rows: list[tuple[str, ...]] = [("trace", "metric", "real", "simulated", "error")]
    for name, v in validation.items():
        for key, e in v["errors"].items():
            err = f"{e['error_pct']}%" if e.get("error_pct") is not None else (f"{e['abs_diff_points']} pts" if "abs_diff_points" in e else "-")
            rows.append((name, key, str(e["real"]), str(e["sim"]), err))
    if validation:
        print(table(rows))
    print(f"\nspeed: {fast['requests']} requests (1 h of the conversation trace at 10x) simulated in {fast['sim_seconds_median']} s "
          f"(median of {len(fast['sim_seconds'])}: {fast['sim_seconds']}); the whole plan ({fast['simulations_in_plan']} simulations) took {fast['plan_seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slice-s", type=float, default=360.0, help="real seconds each trace slice lasts")
    parser.add_argument("--target-busy", type=float, default=0.75, help="the share of time the engine should be busy during the slice")
    parser.add_argument("--cases", default="conversation,code", help="which traces to replay (the others keep their saved results)")
    parser.add_argument("--max-rejected", type=float, default=0.02, help="the most the simulator may predict to be refused at the chosen load")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the 10x simulation")
    parser.add_argument("--speed-only", action="store_true", help="skip profiling and the replays (uses the saved profiles)")
    parser.add_argument("--reuse-profiles", action="store_true", help="replay and simulate with the saved profiles")
    parser.add_argument("--resimulate", action="store_true", help="keep the saved profiles and replays; simulate the saved slices again")
    parser.add_argument("--drift", action="store_true",
                        help="one validation run that also profiles each model just before and just after its replay and simulates with both "
                             "(how far the engine's speed moved during the run); writes bench/results/planner-drift.json, not planner.json")
    parser.add_argument("--drift-name", default=DRIFT_NAME,
                        help="with --drift: the results' name, bench/results/NAME.json and bench/results/NAME/ (default planner-drift)")
    parser.add_argument("--runs", type=int, default=1,
                        help="independent validation runs (each profiles, chooses its slices, replays and simulates again); error_pct is their median")
    args = parser.parse_args()
    previous = json.loads((RESULTS / "planner.json").read_text()) if (RESULTS / "planner.json").exists() else {}
    OUTCOMES.mkdir(parents=True, exist_ok=True)
    if args.drift:
        drift = RESULTS / args.drift_name
        drift.mkdir(parents=True, exist_ok=True)
        validation = validate(args.target_busy, args.slice_s, args.max_rejected, args.cases.split(","), args.reuse_profiles, drift)
        report_drift(validation)
        settings = {"target_busy": args.target_busy, "slice_s": args.slice_s, "max_rejected": args.max_rejected}
        print(f"wrote {write_result(args.drift_name, {'machine': machine(), 'settings': settings, 'validation': validation})}")
        return
    if args.resimulate:
        runs = [resimulate(previous)]
    elif args.speed_only:
        fast = speed(args.repeats)
        report(previous.get("validation") or {}, fast)
        save_speed(previous, fast)
        return
    else:
        runs = []
        for k in range(args.runs):
            runs.append((previous.get("validation") or {}) | validate(args.target_busy, args.slice_s, args.max_rejected, args.cases.split(","), args.reuse_profiles))
            print(f"run {k + 1} of {args.runs} done", file=sys.stderr)
            if k + 1 < args.runs:  # a long repeat that is cut short still leaves the runs it finished
                save(runs, previous, None)
    fast = speed(args.repeats)
    report(runs[-1], fast)
    if len(runs) > 1:
        report_runs(runs)
    save(runs, previous, fast)


def error_summary(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, list[float | None]]]]:
    """Per trace and metric: the median error over the runs, and every run's error."""
    every: dict[str, dict[str, list[float | None]]] = {}
    for validation in runs:
        for name, v in validation.items():
            for key, e in v["errors"].items():
                every.setdefault(name, {}).setdefault(key, []).append(e["error_pct"])
    medians = {name: {key: (statistics.median(x for x in values if x is not None) if any(x is not None for x in values) else None)
                      for key, values in metrics.items()} for name, metrics in every.items()}
    return medians, every


def report_drift(validation: dict[str, Any]) -> None:
    """Real against simulated with the run's first profile and with those measured just before and just after the replay."""
    rows: list[tuple[str, ...]] = [("trace", "metric", "real", "sim (first profile)", "sim (before)", "sim (after)")]
    for name, v in validation.items():
        drift = v["drift"]
        for key, e in v["errors"].items():
            cells = [f"{e['sim']} ({e['error_pct']}%)"] + [f"{drift[w]['errors'][key]['sim']} ({drift[w]['errors'][key]['error_pct']}%)" for w in ("before", "after")]
            rows.append((name, key, str(e["real"]), *cells))
        for when in ("before", "after"):
            d = drift[when]
            rows.append((name, f"profile {when}", f"decode {d['decode_interval_s']}", f"prefill {d['prefill_per_token_s']} s/token", "", ""))
    print(table(rows))


def report_runs(runs: list[dict[str, Any]]) -> None:
    medians, every = error_summary(runs)
    rows: list[tuple[str, ...]] = [("trace", "metric", "median error", "every run")]
    for name, metrics in every.items():
        for key, values in metrics.items():
            rows.append((name, key, f"{medians[name][key]}%", ", ".join("-" if x is None else f"{x}%" for x in values)))
    print(table(rows))


def save(runs: list[dict[str, Any]], previous: dict[str, Any], fast: dict[str, Any] | None) -> None:
    validation = runs[-1]
    medians, every = error_summary(runs) if validation else ({}, {})
    speed_figures = fast or previous.get("speed") or {}
    data = {
        "machine": machine(), "error_pct": medians or previous.get("error_pct", {}), "error_pct_runs": every or previous.get("error_pct_runs", {}),
        "runs": len(runs), "validation": validation or previous.get("validation", {}), "validation_runs": runs if len(runs) > 1 else [],
        "sim_seconds_1h_10x": speed_figures.get("sim_seconds_median"), "speed": speed_figures,
        "profiles": {p.stem: json.loads(p.read_text()) for p in sorted(PROFILES.glob("*.json"))},
        "validation_commit": commit(), "speed_commit": commit() if fast else previous.get("speed_commit", previous.get("commit")),
    }
    print(f"wrote {write_result('planner', data)}")


VALIDATION_KEYS = ("error_pct", "error_pct_runs", "runs", "validation", "validation_runs", "profiles")  # their machine: "machine"


def save_speed(previous: dict[str, Any], fast: dict[str, Any]) -> None:
    """A new speed figure beside the saved validation, which keeps the commit it was measured at."""
    data = {key: previous[key] for key in VALIDATION_KEYS if key in previous} | {
        "machine": previous.get("machine", machine()), "speed_machine": machine(), "sim_seconds_1h_10x": fast.get("sim_seconds_median"), "speed": fast,
        "validation_commit": previous.get("validation_commit", previous.get("commit")), "speed_commit": commit(),
    }
    print(f"wrote {write_result('planner', data)}")


if __name__ == "__main__":
    main()
