"""The fleet file's shape: small frozen dataclasses with named defaults.

Every field here is documented in docs/configuration.md. Backend-specific
options (model file, base URL, ...) live in each backend's own options class
and are kept here as a plain mapping until that backend validates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

ModelKind = Literal["chat", "completion", "embedding"]
AliasStrategy = Literal["rule", "cascade", "learned"]
BalanceStrategy = Literal["least_outstanding", "least_load", "weighted", "lowest_latency", "lowest_cost"]
ValidatorKind = Literal["regex", "json_schema", "max_length"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_GRACE_PERIOD_S = 30.0
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_MAX_QUEUE = 64


@dataclass(frozen=True, slots=True)
class Price:
    """What a deployment costs: per token for APIs, per replica-hour when self-hosted."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    replica_hour: float = 0.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-deployment limits, in seconds."""

    connect_s: float = 5.0
    first_token_s: float = 120.0
    stall_s: float = 60.0
    total_s: float = 600.0


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """Dynamic batching of embedding requests on one deployment."""

    enabled: bool = True
    max_wait_ms: float = 5.0
    max_batch_size: int = 64
    max_batch_tokens: int = 8192


UPSTREAM_STREAMING = ("always", "when_client_streams")  # the first is the default


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """One place a model runs: a backend plus its options."""

    name: str  # "<model>/<name or index>", unique across the fleet
    backend: str
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    weight: float = 1.0
    price: Price = field(default_factory=Price)
    timeouts: Timeouts = field(default_factory=Timeouts)
    batching: BatchingPolicy = field(default_factory=BatchingPolicy)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # The workload classes this deployment takes (empty: every class). A request goes to the deployments that
    # list its class, or to any deployment when none of those is healthy: an interactive engine of its own
    # keeps batch work out of its steps.
    classes: tuple[str, ...] = ()
    # How a request whose client does not stream is fetched. "always" (the default) streams it from the
    # upstream anyway, so first_token_s, stall_s and the TTFT measurements cover it; "when_client_streams"
    # asks for the whole answer in one response: one network read and parse instead of one per token,
    # but a hung upstream is then only caught by total_s, and the request records no TTFT.
    upstream_streaming: str = UPSTREAM_STREAMING[0]

    def serves(self, workload: str) -> bool:
        """Whether this deployment is one of ``workload``'s own: it lists the class, or lists none."""
        return not self.classes or workload in self.classes


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failed call is tried again."""

    max_attempts: int = 3
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment's circuit opens, and how it closes again."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window_s: float = 30.0
    min_requests: int = 10
    cooldown_s: float = 5.0
    half_open_probes: int = 1


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """Send a second copy when the first token is late."""

    enabled: bool = False
    after_ms: float | None = None  # None: the deployment's recent p95 time to first token
    min_samples: int = 20


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A model name clients can ask for, served by one or more deployments."""

    name: str
    kind: ModelKind
    deployments: tuple[DeploymentConfig, ...]
    context_window: int = 4096
    description: str = ""
    strategy: BalanceStrategy = "least_outstanding"
    fallbacks: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    hedge: HedgePolicy = field(default_factory=HedgePolicy)


@dataclass(frozen=True, slots=True)
class ValidatorConfig:
    """A check the final output must pass: a regex, a JSON schema or a length limit."""

    kind: ValidatorKind
    pattern: str = ""
    schema: Mapping[str, Any] | None = None
    max_chars: int = 0


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Send matching requests to ``model``; every condition given must hold (none given: always)."""

    model: str
    name: str = ""
    header: str = ""  # "name" (present) or "name=value"
    tenant: str = ""
    key: str = ""  # an API key id
    tools: bool | None = None  # the request offers tools
    json: bool | None = None  # the request asks for JSON output
    code: bool | None = None  # the prompt shows code markers (fences, keywords, language names: routing.router.CODE_MARKERS)
    min_prompt_chars: int = 0


@dataclass(frozen=True, slots=True)
class IntentConfig:
    """An intent defined by example utterances; a prompt similar enough to one goes to ``model``."""

    name: str
    model: str
    examples: tuple[str, ...]
    threshold: float = 0.6  # cosine similarity of the prompt to the nearest example


DEFAULT_QUALITY_TARGET = 0.9
# Prompt vectors an alias keeps (by routing text): an agent's tool loop re-sends the same user turns, so its
# steps after the first route without running the embedding model again. About 1.5 KB each at 384 dimensions.
DEFAULT_EMBEDDING_CACHE = 4096


@dataclass(frozen=True, slots=True)
class AliasConfig:
    """A name that resolves to one of several models per request."""

    name: str
    targets: tuple[str, ...]
    strategy: AliasStrategy = "rule"
    long_prompt_chars: int = 2000
    description: str = ""
    validators: tuple[ValidatorConfig, ...] = ()
    min_mean_logprob: float | None = None  # cascade: escalate when the answer's mean token logprob is lower
    rules: tuple[RouteRule, ...] = ()  # checked first, in order
    intents: tuple[IntentConfig, ...] = ()  # checked next: the most similar intent above its threshold
    embedding_model: str = ""  # what embeds prompts for intents and the learned router
    router_file: str = ""  # learned: a trained router file (builtin:<name> or a path)
    quality_target: float = DEFAULT_QUALITY_TARGET  # learned: the default of the x-modelyard-quality header
    quality_lambda: float | None = None  # learned: maximise quality - lambda x relative cost instead of a target
    embedding_cache: int = DEFAULT_EMBEDDING_CACHE  # prompt vectors kept, least recently used out (0: embed every request)
    lexical_first: bool = True  # learned: skip the embedding when the router's word view settles the pick (router files with a word band)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """HTTP server and process settings."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    data_dir: str = "~/.cache/modelyard"
    max_request_timeout_s: float = 600.0  # cap on the x-modelyard-timeout header
    # true: a response's last byte waits until its ledger row is committed, so a replica killed at any moment
    # loses no answered request's row (one database round trip per response, shared by concurrent ones).
    durable_ledger: bool = False
    # the access log's lines are written in blocks, at most this long after a block's first line (0: every line at once)
    access_log_flush_s: float = 0.2


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    """Workload-class scheduling, shared by every deployment's scheduler."""

    classes: bool = True  # false: one FCFS queue (for comparison)
    aging_s: float = 30.0
    ttft_objective_s: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({"interactive": 10.0, "agent": 30.0}))
    tenant_weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    session_affinity_slack: int = 2
    reserved_slots: int = 1  # per deployment, slots only interactive and agent work may take
    batch_concurrency: int = 2  # lines each replica runs at once
    batch_lease_s: float = 10.0  # a replica's claim on batch lines; renewed while it works, taken over when it dies
    max_file_bytes: int = 200 * 1024 * 1024


STAGE_SLOTS = ("before_route", "after_route", "after_call")


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One optional pipeline stage, chosen by ``kind`` from the stage registry, in one slot, for some requests.

    ``models`` (requested model or alias names), ``tenants`` and ``keys`` (API key
    ids) narrow where it applies (empty: everywhere). ``options`` are the stage's own, checked by the
    stage when the pipeline is built.
    """

    kind: str
    slot: str = ""  # one of STAGE_SLOTS; empty: the stage's default slot
    models: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    path: str = ""  # where in the fleet file it was declared (for messages)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The whole fleet: models, aliases and server settings."""

    models: tuple[ModelConfig, ...]
    aliases: tuple[AliasConfig, ...] = ()
    server: ServerConfig = field(default_factory=ServerConfig)
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    stages: tuple[StageConfig, ...] = ()
    source: str = "<embedded default fleet>"

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    def alias(self, name: str) -> AliasConfig | None:
        for a in self.aliases:
            if a.name == name:
                return a
        return None
