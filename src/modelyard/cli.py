"""The ``modelyard`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

# Set before torch or llama.cpp load anywhere in this process: spinning OpenMP
# threads slowed inference 10-40x on small shared machines.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from modelyard.config import ConfigError, FleetConfig, load_config  # noqa: E402
from modelyard.config.defaults import default_fleet  # noqa: E402

if TYPE_CHECKING:
    from modelyard.store.accounts import Accounts
    from modelyard.store.store import Store


def _load(path: str | None) -> FleetConfig:
    return load_config(path) if path else default_fleet()


def _check_backends(config: FleetConfig) -> None:
    """Let each backend validate its own options (no I/O, nothing started)."""
    from pathlib import Path

    from modelyard.backends.base import BackendContext
    from modelyard.backends.registry import backend_factory

    context = BackendContext(models_dir=Path("."), config_source=config.source)
    for model in config.models:
        for i, d in enumerate(model.deployments):
            try:
                factory = backend_factory(d.backend)
            except KeyError as exc:
                raise ConfigError(config.source, f"models.{model.name}.deployments[{i}].backend", str(exc.args[0])) from None
            factory(d, model, context)


def _check_stages(config: FleetConfig) -> None:
    """Every configured stage builds: known kind, valid options (nothing started, no model needed)."""
    from modelyard.pipeline.slots import StageEnvironment, build_stages
    from modelyard.pipeline.stage_registry import default_registry

    build_stages(config, StageEnvironment(config, None), default_registry())


def _check_routers(config: FleetConfig) -> None:
    """Learned aliases' router files load and fit their targets (read now, so a bad one fails before the models load)."""
    from modelyard.pipeline.route_inputs import RouterFileError, load_learned

    try:
        load_learned(config)
    except RouterFileError as exc:
        raise ConfigError(config.source, "", str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from modelyard import server
    from modelyard.fleet.artifacts import ArtifactError

    config = _load(args.config)
    _check_backends(config)
    _check_stages(config)
    server.configure_logging(args.log_level)
    data_dir = server.data_dir_of(config, args.data_dir)
    try:
        server.prepare_artifacts(config, data_dir)
    except ArtifactError as exc:
        print(f"modelyard: cannot start: {exc}", file=sys.stderr)
        return 2
    database_url = args.database_url or os.environ.get("MODELYARD_DATABASE_URL")
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        print(f"modelyard: --database-url must be postgresql://..., got {database_url!r}", file=sys.stderr)
        return 2
    redis_url = args.redis_url or os.environ.get("MODELYARD_REDIS_URL")
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        print(f"modelyard: --redis-url must be redis://..., rediss://... or unix://..., got {redis_url!r}", file=sys.stderr)
        return 2
    from modelyard.observe.tracing import tracing_options

    tracing = tracing_options(args.otlp_endpoint, args.otlp_capture_content, os.environ)
    if tracing is not None and not tracing.endpoint.startswith(("http://", "https://")):
        print(f"modelyard: the OTLP endpoint must be http://... or https://..., got {tracing.endpoint!r}", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    return server.run(config, host, port, data_dir, args.log_level, database_url, redis_url, tracing)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _check_backends(config)
    _check_stages(config)
    _check_routers(config)
    deployments = sum(len(m.deployments) for m in config.models)
    print(f"{config.source}: OK ({len(config.models)} models, {len(config.aliases)} aliases, {deployments} deployments)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    config = _load(args.config)
    rows = [("NAME", "KIND", "DEPLOYMENTS", "DESCRIPTION")]
    for m in config.models:
        rows.append((m.name, m.kind, ", ".join(f"{d.name} ({d.backend})" for d in m.deployments), m.description))
    for a in config.aliases:
        rows.append((a.name, "alias", " | ".join(a.targets), a.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from modelyard import server
    from modelyard.fleet.artifacts import ArtifactError

    config = _load(args.config)
    try:
        for name, path in server.prepare_artifacts(config, server.data_dir_of(config, args.data_dir)):
            print(f"{name}: {path}")
    except ArtifactError as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    return 0


def _write_trace(rows: list[dict[str, object]], path: str) -> int:
    from pathlib import Path

    from modelyard.planning.traces import TraceRequest, to_jsonl

    def count(value: object) -> int:
        return int(value) if isinstance(value, (int, float)) else 0

    def text(value: object) -> str | None:
        return value if isinstance(value, str) else None

    origin = float(rows[0]["arrival"]) if rows else 0.0  # type: ignore[arg-type]
    requests = [
        TraceRequest(float(r["arrival"]) - origin, count(r["prompt_tokens"]), count(r["completion_tokens"]),  # type: ignore[arg-type]
                     tenant=text(r["tenant"]), workload=text(r["workload"]), model=text(r["requested_model"]))
        for r in rows
    ]
    Path(path).write_text(to_jsonl(requests))
    print(f"wrote {len(requests)} requests to {path}", file=sys.stderr)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    import asyncio
    import csv

    from modelyard.store.ledger import DatabaseLedger, LedgerWriter

    async def query() -> list[dict[str, object]]:
        store = await _open_store(args)
        ledger = LedgerWriter(DatabaseLedger(store.db))
        try:
            if args.export_trace:
                return await ledger.trace(args.since, args.until)
            return await ledger.usage(tuple(g for g in args.group_by.split(",") if g), args.since, args.until)
        finally:
            await store.aclose()

    try:
        rows = asyncio.run(query())
    except _open_store_errors() as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    if args.export_trace:
        return _write_trace(rows, args.export_trace)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["requests"])
        writer.writeheader()
        writer.writerows(rows)
        return 0
    if not rows:
        print("no requests recorded yet")
        return 0
    columns = list(rows[0])
    cells = [columns] + [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = {c for c in columns if c not in GROUP_COLUMNS}
    for row in cells:
        print("  ".join(cell.rjust(widths[i]) if columns[i] in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)))
    return 0


def _open_store_errors() -> tuple[type[Exception], ...]:
    from modelyard.store.database import StoreUnavailable
    from modelyard.store.migrations import SchemaTooNew

    return (ValueError, StoreUnavailable, SchemaTooNew)


async def _open_store(args: argparse.Namespace) -> Store:
    """The server's store: PostgreSQL when --database-url (or MODELYARD_DATABASE_URL) names one, else the data directory's SQLite."""
    from modelyard import server
    from modelyard.store.store import open_store

    data_dir = server.data_dir_of(_load(args.config), args.data_dir)
    return await open_store(data_dir, getattr(args, "database_url", None) or os.environ.get("MODELYARD_DATABASE_URL"))


async def _accounts_action(accounts: Accounts, args: argparse.Namespace, action: str) -> object:
    from modelyard.store.accounts import AccountError

    if action == "tenant-create":
        return await accounts.create_tenant(args.tenant, args.rpm, args.tpm)
    if action == "tenant-list":
        return await accounts.tenants()
    if action == "tenant-plan":
        if not await accounts.set_plan(args.tenant, args.input_per_1m, args.output_per_1m, args.per_request):
            raise AccountError(f"unknown tenant {args.tenant!r}")
        return {"tenant": args.tenant, "input_per_1m": args.input_per_1m, "output_per_1m": args.output_per_1m, "per_request": args.per_request}
    if action == "tenant-budget":
        if not await accounts.set_budget(args.tenant, args.day, args.month, args.total):
            raise AccountError(f"unknown tenant {args.tenant!r}")
        return {"tenant": args.tenant, "day": args.day, "month": args.month, "total": args.total}
    if action == "key-create":
        models = [m for m in (args.models or "").split(",") if m] or None
        budget = (args.budget_day, args.budget_month, args.budget_total)
        return await accounts.create_key(args.tenant, args.name or "", models, args.max_class, args.rpm, args.tpm, budget)
    if action == "key-list":
        return await accounts.keys(args.tenant)
    if not await accounts.revoke(args.key_id):
        raise AccountError(f"no active key {args.key_id!r}")
    return {"id": args.key_id, "revoked": True}


GROUP_COLUMNS = ("tenant", "api_key", "requested_model", "served_model", "deployment", "workload", "day", "endpoint")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if value < 1 else f"{value:,.2f}"
    return "-" if value is None else str(value)


def _accounts_call(args: argparse.Namespace, action: str) -> int:
    """Tenant and key commands work on the data directory's store directly (a running server picks changes up within seconds)."""
    import asyncio

    from modelyard.store.accounts import AccountError, Accounts

    async def run() -> object:
        store = await _open_store(args)
        try:
            return await _accounts_action(Accounts(store.db), args, action)
        finally:
            await store.aclose()

    errors: tuple[type[Exception], ...] = (AccountError, *_open_store_errors())
    try:
        result = asyncio.run(run())
    except errors as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    if action == "key-create":
        assert isinstance(result, dict)
        print(f"created key {result['id']} for tenant {result['tenant']}. It is shown once; store it now:\n{result['key']}")
    elif isinstance(result, list):
        for row in result:
            print("  ".join(f"{k}={v}" for k, v in row.items() if v not in (None, "")))
        if not result:
            print("none")
    else:
        print(result)
    return 0


def cmd_fake_upstream(args: argparse.Namespace) -> int:
    from modelyard.testing.fake_upstream import FakeScript, serve_fake

    script = FakeScript(latency_ms=args.latency_ms, tokens=args.tokens, token_interval_ms=args.token_interval_ms, capacity=args.capacity)
    serve_fake(script, args.host, args.port)
    return 0


def _add_account_commands(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """``tenants`` and ``keys``: the accounts kept in the data directory."""
    tenants = sub.add_parser("tenants", help="create and list tenants").add_subparsers(dest="action", required=True)
    p = tenants.add_parser("create", help="create a tenant")
    p.add_argument("tenant")
    p.add_argument("--rpm", type=int, help="requests per minute for the whole tenant")
    p.add_argument("--tpm", type=int, help="tokens per minute for the whole tenant")
    p.set_defaults(func=lambda a: _accounts_call(a, "tenant-create"))
    p = tenants.add_parser("list", help="list tenants")
    p.set_defaults(func=lambda a: _accounts_call(a, "tenant-list"))
    p = tenants.add_parser("budget", help="set a tenant's budgets in US dollars (omitted: no limit)")
    p.add_argument("tenant")
    p.add_argument("--day", type=float)
    p.add_argument("--month", type=float)
    p.add_argument("--total", type=float)
    p.set_defaults(func=lambda a: _accounts_call(a, "tenant-budget"))
    p = tenants.add_parser("plan", help="set what a tenant pays (gives revenue and margin in usage)")
    p.add_argument("tenant")
    p.add_argument("--input-per-1m", type=float, default=0.0, help="USD per 1M prompt tokens")
    p.add_argument("--output-per-1m", type=float, default=0.0, help="USD per 1M completion tokens")
    p.add_argument("--per-request", type=float, default=0.0, help="USD per successful request")
    p.set_defaults(func=lambda a: _accounts_call(a, "tenant-plan"))
    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", help="create a key (shown once)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--name")
    p.add_argument("--models", help="comma-separated models the key may use (default: all)")
    p.add_argument("--max-class", choices=["interactive", "agent", "embedding", "background", "batch"], help="the best workload class its requests may claim")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--budget-day", type=float, help="US dollars per day for this key")
    p.add_argument("--budget-month", type=float)
    p.add_argument("--budget-total", type=float)
    p.set_defaults(func=lambda a: _accounts_call(a, "key-create"))
    p = keys.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--tenant")
    p.set_defaults(func=lambda a: _accounts_call(a, "key-list"))
    p = keys.add_parser("revoke", help="revoke a key")
    p.add_argument("key_id")
    p.set_defaults(func=lambda a: _accounts_call(a, "key-revoke"))
    for group in (tenants, keys):
        for child in group.choices.values():
            config_arg(child)
            child.add_argument("--data-dir", help="the server's data directory (default ~/.cache/modelyard)")
            child.add_argument("--database-url", help="postgresql://... when the servers keep their state there (default: the data directory's SQLite)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelyard", description="One OpenAI-compatible endpoint in front of a fleet of models.")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="fleet YAML file (default: the embedded default fleet)")

    p = sub.add_parser("serve", help="serve the fleet over HTTP", description="Start the fleet and serve the OpenAI-compatible API.")
    config_arg(p)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument("--data-dir", help="where assembled models and state live (default ~/.cache/modelyard)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--database-url", help="postgresql://... to keep all state (tenants, keys, files, batch jobs, the ledger) in PostgreSQL, shared by every replica that names it (default: SQLite in the data directory)")
    p.add_argument("--redis-url", help="redis://... to count rate limits and budgets in Redis, shared by every replica that names it (default: in this process)")
    p.add_argument("--otlp-endpoint", help="send OpenTelemetry traces over OTLP/HTTP to this base URL, e.g. http://127.0.0.1:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT; unset: no traces)")
    p.add_argument("--otlp-capture-content", action="store_true", help="put prompts in the spans (gen_ai.input.messages); off by default")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a fleet file without starting anything")
    config_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("models", help="list the fleet's models and aliases")
    config_arg(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("prepare", help="assemble and verify the fleet's model files")
    config_arg(p)
    p.add_argument("--data-dir", help="where assembled models live (default ~/.cache/modelyard)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("usage", help="requests, tokens and cost from the ledger", description="Aggregate the usage ledger (the data directory's SQLite file, or PostgreSQL with --database-url).")
    config_arg(p)
    p.add_argument("--data-dir", help="the server's data directory (default ~/.cache/modelyard)")
    p.add_argument("--group-by", default="tenant,served_model,day", help="comma-separated: tenant, api_key, requested_model, served_model, deployment, workload, day, endpoint")
    p.add_argument("--since", help="first day, YYYY-MM-DD")
    p.add_argument("--until", help="last day, YYYY-MM-DD")
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")
    p.add_argument("--export-trace", metavar="FILE", help="write the chat and completion requests as a trace (JSONL) for replay and plan")
    p.add_argument("--database-url", help="postgresql://... when the servers keep their state there")
    p.set_defaults(func=cmd_usage)

    _add_account_commands(sub, config_arg)

    from modelyard.observe.session_commands import add_commands as add_session_commands

    add_session_commands(sub, config_arg, _open_store)

    from modelyard.training.commands import add_commands

    add_commands(sub)

    from modelyard.planning.commands import add_commands as add_planning_commands

    add_planning_commands(sub)

    from modelyard.backends.ray_commands import add_commands as add_ray_commands

    add_ray_commands(sub)

    p = sub.add_parser("fake-upstream", help="run a fake OpenAI-compatible server (for tests and benchmarks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first token")
    p.add_argument("--tokens", type=int, default=16, help="tokens per completion")
    p.add_argument("--token-interval-ms", type=float, default=0.0, help="delay between streamed tokens")
    p.add_argument("--capacity", type=int, default=0, help="requests served at once, the rest queue (0: unbounded)")
    p.set_defaults(func=cmd_fake_upstream)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"modelyard: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
