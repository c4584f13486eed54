"""``modelyard replay``: the command line of the planning package."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from modelyard.planning.replay import ProgressBar, ReplayOptions, replay, summarize
from modelyard.planning.traces import TraceError, parse_trace, scale, window


def add_trace_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say which load a trace describes (shared by replay and, later, plan)."""
    p.add_argument("--trace", required=True, help="Azure LLM trace CSV, Mooncake-style JSONL, or modelyard's trace JSONL")
    p.add_argument("--start-s", type=float, default=0.0, help="skip the trace's first seconds")
    p.add_argument("--duration-s", type=float, help="replay this many seconds of the trace (after --start-s, before --time-scale)")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply the gaps between arrivals (0.5: twice the rate)")
    p.add_argument("--token-scale", type=float, default=1.0, help="multiply input and output lengths")
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
    options = ReplayOptions(base_url=args.base_url, model=args.model, api_key=args.api_key, token_scale=args.token_scale, ignore_eos=args.ignore_eos)
    print(f"replaying {len(requests)} requests over {requests[-1].arrival_s:.0f} s against {args.base_url}", file=sys.stderr)
    result = asyncio.run(replay(requests, options, ProgressBar()))
    summary = summarize(result)
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
    from modelyard.planning.profile import profile_backend

    config = load_config(args.config) if args.config else default_fleet()
    model = config.model(args.model)
    if model is None or model.kind == "embedding":
        known = ", ".join(m.name for m in config.models if m.kind != "embedding")
        print(f"modelyard profile: no generative model {args.model!r} in {config.source} (known: {known})", file=sys.stderr)
        return 2
    context = BackendContext(models_dir=server.data_dir_of(config, args.data_dir) / "models", threads_per_worker=args.threads, config_source=config.source)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        for deployment in model.deployments:
            backend = backend_factory(deployment.backend)(deployment, model, context)
            await backend.start()
            try:
                print(f"profiling {deployment.name} ...", file=sys.stderr)
                result = await profile_backend(backend, model.name, deployment_slots(deployment), repeats=args.repeats)
            finally:
                await backend.aclose()
            result |= {"model": model.name, "deployment": deployment.name, "backend": deployment.backend,
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            path = out / (deployment.name.replace("/", "__") + ".json")
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


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="send a trace's requests at their arrival times to an OpenAI-compatible endpoint and measure",
        description="Real load from a trace against modelyard or any OpenAI-compatible engine: TTFT, TPOT, end to end, throughput, rejections.",
    )
    add_trace_flags(p)
    p.add_argument("--base-url", required=True, help="the endpoint, up to and including /v1 (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="sent as a bearer token (the key decides the tenant)")
    p.add_argument("--ignore-eos", action="store_true", help="ask the engine to generate exactly max_tokens (vLLM, llama-server)")
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
    p.add_argument("--threads", type=int, default=2, help="threads for local engines without their own setting")
    p.add_argument("--repeats", type=int, default=2, help="measurements per point")
    p.set_defaults(func=cmd_profile)
