"""Turn a YAML fleet file (or a mapping) into a validated :class:`FleetConfig`.

Every error names the file, the field path and what is wrong, e.g.
``fleet.yaml: models.chat.deployments[0].max_concurrency: expected an integer >= 1, got 'two'``.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from modelyard.config.aliases import parse_aliases
from modelyard.config.reader import ConfigError, Reader, show
from modelyard.config.schema import (
    STAGE_SLOTS,
    UPSTREAM_STREAMING,
    AliasConfig,
    BatchingPolicy,
    BreakerPolicy,
    DeploymentConfig,
    FleetConfig,
    HedgePolicy,
    ModelConfig,
    Price,
    RetryPolicy,
    SchedulingConfig,
    ServerConfig,
    StageConfig,
    Timeouts,
)

MODEL_KINDS = ("chat", "completion", "embedding")
BALANCE_STRATEGIES = ("least_outstanding", "least_load", "weighted", "lowest_latency", "lowest_cost")
DEPLOYMENT_COMMON_KEYS = {"name", "backend", "max_concurrency", "max_queue", "weight", "price", "timeouts", "batching", "classes", "upstream_streaming"}
WORKLOADS = ("interactive", "agent", "batch", "embedding", "background")


def load_config(path: str | Path) -> FleetConfig:
    """Read and validate a YAML fleet file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"invalid YAML: {where}{problem}") from None
    return parse_config(data, source=source)


def parse_config(data: Any, source: str = "<config>") -> FleetConfig:
    """Validate an already-parsed mapping (YAML or the embedded default)."""
    root = Reader(source, "", data if data is not None else {})
    models = _parse_models(root)
    _check_fallbacks(source, models)
    aliases = parse_aliases(root, models)
    server = _parse_server(root.child("server"))
    scheduling = _parse_scheduling(root.child("scheduling"))
    stages = tuple(_parse_stage(r, models, aliases) for r in root.each("stages", "stages"))
    root.reject_unknown({"models", "aliases", "server", "scheduling", "stages"})
    return FleetConfig(models=models, aliases=aliases, server=server, scheduling=scheduling, stages=stages, source=source)


def _parse_stage(r: Reader, models: tuple[ModelConfig, ...], aliases: tuple[AliasConfig, ...]) -> StageConfig:
    known = {m.name for m in models} | {a.name for a in aliases}
    names = r.names("models")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise r.fail("models", f"no model or alias named {', '.join(unknown)}")
    options = r.get("options", {}) or {}
    if not isinstance(options, Mapping):
        raise r.fail("options", "expected a mapping of the stage's options")
    stage = StageConfig(
        kind=r.string("kind"), slot=r.choice("slot", ("", *STAGE_SLOTS), ""), models=names, tenants=r.names("tenants"),
        keys=r.names("keys"), options=MappingProxyType(dict(options)), path=r.path,
    )
    r.reject_unknown()
    return stage


def _parse_models(root: Reader) -> tuple[ModelConfig, ...]:
    raw = root.get("models")
    if not isinstance(raw, Mapping) or not raw:
        raise root.fail("models", "expected a non-empty mapping of model name to model")
    models = []
    for name, body in raw.items():
        reader = Reader(root.source, f"models.{name}", body)
        models.append(_parse_model(str(name), reader))
    return tuple(models)


def _parse_model(name: str, r: Reader) -> ModelConfig:
    kind = r.string("kind", "chat")
    if kind not in MODEL_KINDS:
        raise r.fail("kind", f"expected one of {', '.join(MODEL_KINDS)}, got {show(kind)}")
    raw_deployments = r.get("deployments")
    if not isinstance(raw_deployments, list) or not raw_deployments:
        raise r.fail("deployments", "expected a non-empty list of deployments")
    deployments = tuple(
        _parse_deployment(Reader(r.source, f"{r.at('deployments')}[{i}]", d), name, str(i))
        for i, d in enumerate(raw_deployments)
    )
    names = [d.name for d in deployments]
    if len(set(names)) != len(names):
        raise r.fail("deployments", "deployment names must be unique within a model")
    model = ModelConfig(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        deployments=deployments,
        context_window=r.integer("context_window", 4096),
        description=str(r.get("description", "") or ""),
        strategy=r.choice("strategy", BALANCE_STRATEGIES, "least_outstanding"),  # type: ignore[arg-type]
        fallbacks=r.names("fallbacks"),
        retry=_parse_retry(r.child("retry")),
        breaker=_parse_breaker(r.child("breaker")),
        hedge=_parse_hedge(r.child("hedge")),
    )
    r.reject_unknown()
    return model


def _parse_retry(r: Reader) -> RetryPolicy:
    d = RetryPolicy()
    policy = RetryPolicy(
        max_attempts=r.integer("max_attempts", d.max_attempts),
        backoff_base_s=r.number("backoff_base_s", d.backoff_base_s),
        backoff_max_s=r.number("backoff_max_s", d.backoff_max_s),
    )
    r.reject_unknown()
    return policy


def _parse_breaker(r: Reader) -> BreakerPolicy:
    d = BreakerPolicy()
    rate = r.number("failure_rate", d.failure_rate, 0.0)
    if rate > 1:
        raise r.fail("failure_rate", f"expected a number between 0 and 1, got {rate!r}")
    policy = BreakerPolicy(
        consecutive_failures=r.integer("consecutive_failures", d.consecutive_failures),
        failure_rate=rate,
        window_s=r.number("window_s", d.window_s, 0.001),
        min_requests=r.integer("min_requests", d.min_requests),
        cooldown_s=r.number("cooldown_s", d.cooldown_s, 0.001),
        half_open_probes=r.integer("half_open_probes", d.half_open_probes),
    )
    r.reject_unknown()
    return policy


def _parse_hedge(r: Reader) -> HedgePolicy:
    d = HedgePolicy()
    policy = HedgePolicy(
        enabled=r.boolean("enabled", d.enabled),
        after_ms=r.optional_number("after_ms", 0.0),
        min_samples=r.integer("min_samples", d.min_samples),
    )
    r.reject_unknown()
    return policy


def _parse_deployment(r: Reader, model: str, default_name: str) -> DeploymentConfig:
    """A deployment; its id is ``<model>/<name>`` so ids are unique across the fleet."""
    price_r = r.child("price")
    price = Price(
        input_per_1m=price_r.number("input_per_1m", 0.0),
        output_per_1m=price_r.number("output_per_1m", 0.0),
        replica_hour=price_r.number("replica_hour", 0.0),
    )
    price_r.reject_unknown()
    timeouts_r = r.child("timeouts")
    default = Timeouts()
    timeouts = Timeouts(
        connect_s=timeouts_r.number("connect_s", default.connect_s, 0.001),
        first_token_s=timeouts_r.number("first_token_s", default.first_token_s, 0.001),
        stall_s=timeouts_r.number("stall_s", default.stall_s, 0.001),
        total_s=timeouts_r.number("total_s", default.total_s, 0.001),
    )
    timeouts_r.reject_unknown()
    batching_r = r.child("batching")
    b = BatchingPolicy()
    batching = BatchingPolicy(
        enabled=batching_r.boolean("enabled", b.enabled),
        max_wait_ms=batching_r.number("max_wait_ms", b.max_wait_ms),
        max_batch_size=batching_r.integer("max_batch_size", b.max_batch_size),
        max_batch_tokens=batching_r.integer("max_batch_tokens", b.max_batch_tokens),
    )
    batching_r.reject_unknown()
    options = {k: v for k, v in r.data.items() if k not in DEPLOYMENT_COMMON_KEYS}
    classes = r.names("classes")
    for i, name in enumerate(classes):
        if name not in WORKLOADS:
            raise r.fail(f"classes[{i}]", f"unknown workload class {show(name)} (known: {', '.join(WORKLOADS)})")
    return DeploymentConfig(
        name=f"{model}/{r.string('name', default_name)}",
        backend=r.string("backend"),
        max_concurrency=r.integer("max_concurrency", 8),
        max_queue=r.integer("max_queue", 64, minimum=0),
        weight=r.number("weight", 1.0, 0.0),
        price=price,
        timeouts=timeouts,
        batching=batching,
        options=MappingProxyType(dict(options)),
        classes=classes,
        upstream_streaming=r.choice("upstream_streaming", UPSTREAM_STREAMING, UPSTREAM_STREAMING[0]),
    )


def _check_fallbacks(source: str, models: tuple[ModelConfig, ...]) -> None:
    by_name = {m.name: m for m in models}
    for model in models:
        for i, target in enumerate(model.fallbacks):
            other = by_name.get(target)
            path = f"models.{model.name}.fallbacks[{i}]"
            if other is None:
                raise ConfigError(source, path, f"unknown model {show(target)}")
            if other.kind != model.kind or target == model.name:
                raise ConfigError(source, path, f"model {target!r} cannot stand in for {model.name!r} (kind {other.kind})")


def _number_map(r: Reader, key: str, keys: tuple[str, ...] | None) -> dict[str, float]:
    raw = r.get(key, {}) or {}
    if not isinstance(raw, Mapping):
        raise r.fail(key, "expected a mapping of name to number")
    out = {}
    for name, value in raw.items():
        if keys is not None and name not in keys:
            raise r.fail(f"{key}.{name}", f"unknown workload class (known: {', '.join(keys)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise r.fail(f"{key}.{name}", f"expected a positive number, got {show(value)}")
        out[str(name)] = float(value)
    return out


def _parse_scheduling(r: Reader) -> SchedulingConfig:
    d = SchedulingConfig()
    objectives = dict(d.ttft_objective_s) | _number_map(r, "ttft_objective_s", WORKLOADS)
    config = SchedulingConfig(
        classes=r.boolean("classes", d.classes),
        aging_s=r.number("aging_s", d.aging_s, 0.001),
        ttft_objective_s=MappingProxyType(objectives),
        tenant_weights=MappingProxyType(_number_map(r, "tenant_weights", None)),
        session_affinity_slack=r.integer("session_affinity_slack", d.session_affinity_slack, minimum=0),
        reserved_slots=r.integer("reserved_slots", d.reserved_slots, minimum=0),
        batch_concurrency=r.integer("batch_concurrency", d.batch_concurrency),
        batch_lease_s=r.number("batch_lease_s", d.batch_lease_s, 1.0),
        max_file_bytes=r.integer("max_file_bytes", d.max_file_bytes),
    )
    r.reject_unknown()
    return config


def _parse_server(r: Reader) -> ServerConfig:
    defaults = ServerConfig()
    server = ServerConfig(
        host=r.string("host", defaults.host),
        port=r.integer("port", defaults.port, minimum=0),
        max_body_bytes=r.integer("max_body_bytes", defaults.max_body_bytes),
        grace_period_s=r.number("grace_period_s", defaults.grace_period_s),
        data_dir=r.string("data_dir", defaults.data_dir),
        max_request_timeout_s=r.number("max_request_timeout_s", defaults.max_request_timeout_s, 0.001),
        durable_ledger=r.boolean("durable_ledger", defaults.durable_ledger),
        access_log_flush_s=r.number("access_log_flush_s", defaults.access_log_flush_s),
    )
    r.reject_unknown()
    return server
