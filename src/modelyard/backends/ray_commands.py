"""``modelyard ray deploy|status``: the fleet's local engines on a Ray cluster (docs/scaling.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modelyard.backends.ray_serve import RayEngineSpec, deploy, replica_counts
from modelyard.config import FleetConfig, load_config
from modelyard.config.defaults import default_fleet
from modelyard.fleet import artifacts

ENGINE_BACKENDS = ("llamacpp_server", "llamacpp")


def engine_specs(config: FleetConfig, models_dir: Path, only: list[str], args: argparse.Namespace) -> list[RayEngineSpec]:
    """One spec per local chat model (its first engine deployment's file and settings), or only those named."""
    specs = []
    for model in config.models:
        engines = [d for d in model.deployments if d.backend in ENGINE_BACKENDS]
        if model.kind != "chat" or not engines or (only and model.name not in only):
            continue
        options = engines[0].options
        specs.append(RayEngineSpec(
            model=model.name, model_file=str(artifacts.resolve(str(options["model_file"]), models_dir)),
            parallel=int(options.get("parallel", 4)), n_ctx=int(options.get("n_ctx", 2048)), threads=args.threads,
            min_replicas=args.min_replicas, max_replicas=args.max_replicas, target_ongoing_requests=args.target_ongoing,
            upscale_delay_s=args.upscale_delay_s, downscale_delay_s=args.downscale_delay_s,
        ))
    missing = set(only) - {s.model for s in specs}
    if missing:
        raise ValueError(f"not a local chat model of this fleet: {', '.join(sorted(missing))}")
    return specs


# One Serve endpoint fronts every replica of a model: a replica's death fails the requests it held at once, and
# Serve needs seconds to route around it. So the gateway retries patiently, and its breaker for the endpoint
# tolerates that burst instead of opening and refusing the retries (the default opens after 5 consecutive failures).
SERVE_RETRY = "{max_attempts: 6, backoff_base_s: 0.5, backoff_max_s: 5}"
SERVE_BREAKER = "{consecutive_failures: 20, failure_rate: 0.9}"


def gateway_fleet(urls: dict[str, str]) -> str:
    """The gateway's fleet entries that reach the Serve-hosted engines as ordinary OpenAI-compatible deployments."""
    lines = ["models:"]
    for model, url in urls.items():
        lines += [
            f"  {model}:", "    kind: chat", f"    retry: {SERVE_RETRY}", f"    breaker: {SERVE_BREAKER}", "    deployments:",
            f"      - {{backend: openai, base_url: '{url}', upstream_model: {model}}}",
        ]
    return "\n".join(lines) + "\n"


def cmd_deploy(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else default_fleet()
    models_dir = Path(args.data_dir or config.server.data_dir).expanduser() / "models"
    try:
        specs = engine_specs(config, models_dir, [m for m in (args.models or "").split(",") if m], args)
    except (ValueError, artifacts.ArtifactError) as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    urls = deploy(specs, args.address, args.http_host, args.http_port)
    print(gateway_fleet(urls), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(replica_counts(args.address), indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ray = sub.add_parser("ray", help="run the fleet's local engines on a Ray cluster (Ray Serve)").add_subparsers(dest="action", required=True)
    p = ray.add_parser(
        "deploy", help="deploy local engines as autoscaled Serve applications; prints the gateway's fleet entries for them",
        description="Each local chat model becomes a Serve application at /<model> running llama.cpp's server per replica.",
    )
    p.add_argument("--config", help="fleet YAML file (default: the embedded default fleet)")
    p.add_argument("--data-dir", help="where assembled model files live (default ~/.cache/modelyard); every Ray node must see the same path")
    p.add_argument("--models", help="comma-separated models (default: every local chat model)")
    p.add_argument("--address", default="auto", help="the Ray cluster (default: auto, the one this machine joined)")
    p.add_argument("--http-host", default="127.0.0.1", help="where Serve's HTTP proxy listens (0.0.0.0 for other machines)")
    p.add_argument("--http-port", type=int, default=8100)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (and Ray CPUs) per engine replica")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--target-ongoing", type=float, default=2.0, help="requests in progress per replica that Serve scales towards")
    p.add_argument("--upscale-delay-s", type=float, default=5.0)
    p.add_argument("--downscale-delay-s", type=float, default=30.0)
    p.set_defaults(func=cmd_deploy)
    p = ray.add_parser("status", help="replicas per engine, by state")
    p.add_argument("--address", default="auto")
    p.set_defaults(func=cmd_status)
