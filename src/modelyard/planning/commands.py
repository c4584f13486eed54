"""``modelyard replay``: the command line of the planning package."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from modelyard.planning.replay import ProgressBar, ReplayOptions, outcomes_jsonl, replay, summarize
from modelyard.planning.traces import TraceError, amplify, parse_trace, scale, window


def add_trace_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say which load a trace describes (shared by replay and, later, plan)."""
    p.add_argument("--trace", required=True, help="Azure LLM trace CSV, Mooncake-style JSONL, or modelyard's trace JSONL")
    p.add_argument("--start-s", type=float, default=0.0, help="skip the trace's first seconds")
    p.add_argument("--duration-s", type=float, help="replay this many seconds of the trace (after --start-s, before --time-scale)")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply the gaps between arrivals (0.5: twice the rate)")
    p.add_argument("--token-scale", type=float, default=1.0, help="multiply input and output lengths")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the traffic over the same span (10: ten times the requests, the trace's bursts kept)")
    p.add_argument("--max-requests", type=int, help="stop after this many requests")
    p.add_argument("--model", default="auto", help="the model for requests whose trace names none")
    p.add_argument("--workload", help="workload class for requests whose trace names none (interactive, batch, ...)")


def load_trace(args: argparse.Namespace) -> list[Any]:
    path = Path(args.trace)
    try:
        requests = parse_trace(path.read_text(), source=str(path))
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    requests = window(requests, args.start_s, args.duration_s)
    requests = scale(requests, args.time_scale, args.token_scale)
    if args.scale != 1.0:
        requests = amplify(requests, args.scale)
    if args.max_requests is not None:
        requests = requests[: args.max_requests]
    if args.workload:
        from dataclasses import replace

        requests = [r if r.workload else replace(r, workload=args.workload) for r in requests]
    return requests


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        requests = load_trace(args)
    except (TraceError, ValueError) as exc:
        print(f"modelyard replay: {exc}", file=sys.stderr)
        return 2
    if not requests:
        print("modelyard replay: the chosen window holds no requests", file=sys.stderr)
        return 2
    options = ReplayOptions(base_url=args.base_url, model=args.model, api_key=args.api_key, token_scale=args.token_scale, ignore_eos=args.ignore_eos,
                            calibrate=not args.no_calibrate)
    print(f"replaying {len(requests)} requests over {requests[-1].arrival_s:.0f} s against {args.base_url}", file=sys.stderr)
    result = asyncio.run(replay(requests, options, ProgressBar()))
    summary = summarize(result) | {"words_per_token": round(result.words_per_token, 4), "preamble_tokens": round(result.preamble_tokens, 1)}
    if args.outcomes:
        Path(args.outcomes).write_text(outcomes_jsonl(requests, result))
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key.ljust(width)}  {'-' if value is None else value}")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    import time

    from modelyard import server
    from modelyard.backends.base import BackendContext
    from modelyard.backends.registry import backend_factory, deployment_slots
    from modelyard.config import load_config
    from modelyard.config.defaults import default_fleet
    from modelyard.fleet.artifacts import ArtifactError
    from modelyard.pipeline.fleet import local_worker_count
    from modelyard.planning.engine_model import profile_path
    from modelyard.planning.profile import profile_backend

    config = load_config(args.config) if args.config else default_fleet()
    model = config.model(args.model)
    if model is None or model.kind == "embedding":
        known = ", ".join(m.name for m in config.models if m.kind != "embedding")
        print(f"modelyard profile: no generative model {args.model!r} in {config.source} (known: {known})", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_ledger:
        return _profile_from_ledger(config, model, args, out)
    # Threads as `serve` gives them on this machine, so the profile measures the deployment as it is served.
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, local_worker_count(config)))
    context = BackendContext(models_dir=server.data_dir_of(config, args.data_dir) / "models", threads_per_worker=threads, config_source=config.source)

    async def run() -> None:
        for deployment in model.deployments:
            backend = _through(args.base_url, model, deployment, context) if args.base_url else backend_factory(deployment.backend)(deployment, model, context)
            await backend.start()
            try:
                print(f"profiling {deployment.name} ...", file=sys.stderr)
                result = await profile_backend(backend, model.name, deployment_slots(deployment), repeats=args.repeats)
            finally:
                await backend.aclose()
            result |= {"model": model.name, "deployment": deployment.name, "backend": deployment.backend, "threads": threads, "through": args.base_url,
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            path = profile_path(out, deployment.name)
            path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            pre, dec = result["prefill"], result["decode_interval_s"]
            print(f"{deployment.name}: prefill {pre['fixed_s'] * 1000:.0f} ms + {pre['per_token_s'] * 1000:.2f} ms/token; "
                  f"token interval by batch {', '.join(f'{k}: {v * 1000:.1f} ms' for k, v in dec.items())} -> {path}")

    try:
        asyncio.run(run())
    except ArtifactError as exc:
        print(f"modelyard profile: {exc}", file=sys.stderr)
        return 3
    return 0


def _profile_from_ledger(config: Any, model: Any, args: argparse.Namespace, out: Path) -> int:
    """Profiles of ``model``'s deployments fitted from the ledger; 2 when none has enough history."""
    import time

    from modelyard import server
    from modelyard.planning.engine_model import profile_path
    from modelyard.planning.ledger_profile import NotEnoughHistory, fit_remote
    from modelyard.planning.plan import self_hosted
    from modelyard.store.database import StoreUnavailable
    from modelyard.store.ledger import DatabaseLedger, LedgerWriter
    from modelyard.store.migrations import SchemaTooNew
    from modelyard.store.store import open_store

    names = tuple(d.name for d in model.deployments)

    async def rows() -> list[dict[str, Any]]:
        store = await open_store(server.data_dir_of(config, args.data_dir), args.database_url or os.environ.get("MODELYARD_DATABASE_URL"))
        try:
            return await LedgerWriter(DatabaseLedger(store.db)).timings(names, args.since, args.until)
        finally:
            await store.aclose()

    try:
        history = asyncio.run(rows())
    except (ValueError, StoreUnavailable, SchemaTooNew) as exc:
        print(f"modelyard profile: {exc}", file=sys.stderr)
        return 2
    written = 0
    for deployment in model.deployments:
        if self_hosted(deployment):
            print(f"modelyard profile: note: {deployment.name} runs here; the plan simulates it as a batching engine, which a ledger "
                  "fit (one request at a time) does not describe: measure it with `modelyard profile` without --from-ledger", file=sys.stderr)
        try:
            result = fit_remote([r for r in history if r["deployment"] == deployment.name], args.min_samples)
        except NotEnoughHistory as exc:
            print(f"modelyard profile: {deployment.name}: {exc} in the ledger; not written", file=sys.stderr)
            continue
        result |= {"model": model.name, "deployment": deployment.name, "backend": deployment.backend, "since": args.since, "until": args.until,
                   "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path = profile_path(out, deployment.name)
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        pre, ttft = result["prefill"], result["jitter"]["ttft"]
        print(f"{deployment.name}: {result['samples']} requests; TTFT {pre['fixed_s'] * 1000:.0f} ms + {pre['per_token_s'] * 1000:.3f} ms/token "
              f"(x{ttft[len(ttft) // 2]:.2f} median, x{ttft[-2]:.2f} at p95); token interval {result['decode_interval_s']['1'] * 1000:.1f} ms -> {path}")
        written += 1
    return 0 if written else 2


def _through(base_url: str, model: Any, deployment: Any, context: Any) -> Any:
    """An OpenAI-compatible client of ``model`` at ``base_url`` (a running modelyard): the deployment measured as clients see it."""
    from dataclasses import replace
    from types import MappingProxyType

    from modelyard.backends.registry import backend_factory

    remote = replace(deployment, backend="openai", options=MappingProxyType({"base_url": base_url, "upstream_model": model.name}))
    return backend_factory("openai")(remote, replace(model, deployments=(remote,)), context)


def cmd_plan(args: argparse.Namespace) -> int:
    from modelyard.config import ConfigError, load_config
    from modelyard.config.defaults import default_fleet
    from modelyard.planning.engine_model import ProfileError
    from modelyard.planning.plan import (
        DEFAULT_OBJECTIVES,
        PlanError,
        load_engines,
        parse_objective,
        parse_price_plan,
        parse_split,
        parse_tenant_limit,
    )
    from modelyard.planning.simulate import SimOptions
    from modelyard.planning.whatif import WHAT_IFS, PlanInputs, load_target_shares, served_row

    try:
        requests = load_trace(args)
        config = load_config(args.config) if args.config else default_fleet()
        objectives = [parse_objective(s) for s in args.slo] if args.slo else None
        plans = dict(parse_price_plan(p) for p in args.price_plan)
        splits = dict(parse_split(s) for s in args.split)
        target_shares = dict(load_target_shares(t, config) for t in args.target_shares)
        for alias, rows in target_shares.items():
            if alias not in splits:  # the plan itself divides the alias as it is served: at its configured quality target
                served = served_row(rows, config.alias(alias).quality_target)  # type: ignore[union-attr]
                splits[alias] = dict(served.shares)
                print(f"{alias}: planned at quality target {served.target:g} ({', '.join(f'{v:.0%} {m}' for m, v in served.shares.items())})", file=sys.stderr)
        chosen = [w.strip() for w in args.what_if.split(",") if w.strip()] if args.what_if else []
        unknown = sorted(set(chosen) - set(WHAT_IFS))
        if unknown:
            raise PlanError(f"--what-if: unknown {', '.join(unknown)} (choose from {', '.join(WHAT_IFS)})")
        options = SimOptions(default_model=args.model, default_workload=args.workload or "interactive", splits=splits,
                             gateway_overhead_s=args.overhead_ms / 1000, cache_hit_rate=args.cache_hit_rate,
                             token_scale=args.token_scale, seed=args.seed, tenant_limits=dict(parse_tenant_limit(t) for t in args.tenant_limit))
        inputs = PlanInputs(config, load_engines(config, Path(args.profiles)), requests, objectives or list(DEFAULT_OBJECTIVES), options, plans, target_shares)
    except (TraceError, PlanError, ProfileError, ConfigError, ValueError) as exc:
        print(f"modelyard plan: {exc}", file=sys.stderr)
        return 2
    if not requests:
        print("modelyard plan: the chosen window holds no requests", file=sys.stderr)
        return 2
    return run_plan(inputs, chosen, args)


def run_plan(inputs: Any, chosen: list[str], args: argparse.Namespace) -> int:
    import time

    from modelyard.errors import ModelyardError
    from modelyard.planning.plan import plan_replicas, summarize_run
    from modelyard.planning.report import print_plan, records_jsonl, write_html
    from modelyard.planning.whatif import what_ifs

    started = time.perf_counter()
    print(f"planning {len(inputs.trace)} requests over {inputs.trace[-1].arrival_s:.0f} s ...", file=sys.stderr)
    try:
        planned = plan_replicas(inputs.config, inputs.engines, inputs.trace, inputs.objectives, inputs.options, args.max_replicas)
        summary = summarize_run(inputs.config, planned.run, inputs.objectives, inputs.plans)
        rows = what_ifs(inputs, planned, chosen) if chosen else []
    except ModelyardError as exc:
        print(f"modelyard plan: {exc}", file=sys.stderr)
        return 2
    summary |= {"objectives_met": planned.met, "simulations": planned.runs, "what_ifs": rows, "plan_seconds": round(time.perf_counter() - started, 2)}
    print_plan(summary)
    if args.outcomes:
        Path(args.outcomes).write_text(records_jsonl(planned.run.records))
    if args.html:
        write_html(Path(args.html), summary, planned.run.records, inputs.objectives)
        print(f"report: {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0 if all(planned.met.values()) else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="send a trace's requests at their arrival times to an OpenAI-compatible endpoint and measure",
        description="Real load from a trace against modelyard or any OpenAI-compatible engine: TTFT, TPOT, end to end, throughput, rejections.",
    )
    add_trace_flags(p)
    p.add_argument("--base-url", required=True, help="the endpoint, up to and including /v1 (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="sent as a bearer token (the key decides the tenant)")
    p.add_argument("--ignore-eos", action="store_true", help="ask the engine to generate exactly max_tokens (vLLM, llama-server)")
    p.add_argument("--outcomes", metavar="FILE", help="write one JSON line per request: status, model, deployment, TTFT, end to end")
    p.add_argument("--no-calibrate", action="store_true",
                   help="send one word per trace token; by default two probe requests first measure the endpoint's tokens per word "
                   "(usage.prompt_tokens), so prompts have the trace's token counts")
    p.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "profile", help="measure a model's deployments: prefill time by prompt length, token interval by batch size",
        description="Start each deployment of the model through its own adapter and measure the engine model the planner uses.",
    )
    p.add_argument("--model", required=True, help="a chat or completion model of the fleet")
    p.add_argument("--config", help="fleet file (default: the embedded fleet)")
    p.add_argument("--data-dir", help="where assembled models live (default ~/.cache/modelyard)")
    p.add_argument("--out", required=True, help="directory for the profile files")
    p.add_argument("--threads", type=int, help="threads for local engines without their own setting (default: what `serve` gives them here)")
    p.add_argument("--repeats", type=int, default=2, help="measurements per point")
    p.add_argument("--base-url", help="measure through a running modelyard (or any OpenAI-compatible endpoint) serving the model, "
                   "gateway included, instead of starting the deployment here; with several deployments per model, profile each engine directly")
    p.add_argument("--from-ledger", action="store_true",
                   help="send nothing: fit each deployment's TTFT line, token interval and their spread from the requests the ledger recorded "
                   "(for hosted APIs, which cannot be probed for free; the store is the one `serve` uses)")
    p.add_argument("--database-url", help="with --from-ledger: PostgreSQL store (default: $MODELYARD_DATABASE_URL, else the data directory's SQLite)")
    p.add_argument("--since", help="with --from-ledger: first day (YYYY-MM-DD)")
    p.add_argument("--until", help="with --from-ledger: last day (YYYY-MM-DD)")
    p.add_argument("--min-samples", type=int, default=30, help="with --from-ledger: fewest answered requests a deployment needs")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "plan", help="simulate a trace through the fleet's own decisions: replicas needed, latency, cost and margin",
        description="Discrete-event simulation of a trace (at --scale times its rate) through modelyard's router, balancer, schedulers, "
        "breakers, retries and cost code, with engines modelled from `modelyard profile` files. Searches the fewest replicas per "
        "self-hosted deployment that meet the objectives. Exit status 1 when no size up to --max-replicas meets them.",
    )
    add_trace_flags(p)
    p.add_argument("--config", help="fleet file, the one `serve` takes (default: the embedded fleet)")
    p.add_argument("--profiles", required=True, help="directory of `modelyard profile` files, one per deployment")
    p.add_argument("--slo", action="append", default=[], metavar="NAME=VALUE",
                   help="objective, repeatable: [CLASS_]p50|p90|p99_ttft_s|e2e_s=SECONDS or max_rejected_rate=FRACTION "
                   "(default: interactive_p99_ttft_s=2 and max_rejected_rate=0.01)")
    p.add_argument("--price-plan", action="append", default=[], metavar="TENANT=IN,OUT[,REQ]",
                   help="what a tenant pays per 1M input and output tokens (and per request); TENANT * for everyone else; gives revenue and margin")
    p.add_argument("--split", action="append", default=[], metavar="ALIAS=MODEL:SHARE,...",
                   help="how an alias that routes by prompt content (learned, intents) divides the trace; without it the alias's rules decide on an empty prompt")
    p.add_argument("--cache-hit-rate", type=float, default=0.0, help="share of prompt tokens a prefix cache saves (0-1)")
    p.add_argument("--overhead-ms", type=float, default=3.0, help="the gateway's own time added to each request")
    p.add_argument("--max-replicas", type=int, default=512, help="the largest replica count tried per deployment")
    p.add_argument("--tenant-limit", action="append", default=[], metavar="TENANT=RPM,TPM",
                   help="a tenant's requests and tokens per minute (- for none), counted by the server's own limiter: over them, a 429")
    p.add_argument("--target-shares", action="append", default=[], metavar="ALIAS=FILE",
                   help="a learned alias's split per quality target (`modelyard router shares`): the plan divides the alias at its configured "
                   "target, and the `target` what-if re-plans at every target in the file")
    p.add_argument("--what-if", default="burst,cache,split,target,mix", help="variants to report, comma-separated from burst, cache, split, target, mix; empty for none")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation's random choices")
    p.add_argument("--html", metavar="FILE", help="also write an HTML report with plots")
    p.add_argument("--outcomes", metavar="FILE", help="write one JSON line per simulated request (as `replay --outcomes` does)")
    p.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    p.set_defaults(func=cmd_plan)
