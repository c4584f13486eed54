"""Optional stages by name: the fleet file's ``stages`` list, built from a registry into named slots.

A stage is added by configuration, not by editing :func:`build_pipeline`:
each entry names a ``kind`` from the registry, the slot it sits in (or the
kind's default) and the requests it applies to. Slots, in request order:

- ``before_route``: after classification and rate limits, before the model is
  chosen (the PII filter: routing never sees what it redacts);
- ``after_route``: the model is known, nothing is reserved or run yet (the
  response cache, the context budget);
- ``after_call``: right around the backend call, inside validation and budgets.

Within a slot, stages run in the order the file lists them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from redis.asyncio import Redis

from modelyard.config import FleetConfig, Reader, StageConfig
from modelyard.config.reader import ConfigError
from modelyard.config.schema import STAGE_SLOTS
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.dispatch import Dispatcher
from modelyard.pipeline.types import Handler, Request, Response, Stage


@dataclass(frozen=True, slots=True)
class StageEnvironment:
    """What a stage may use besides its options."""

    config: FleetConfig
    dispatcher: Dispatcher | None  # None when stages are only being checked (``modelyard check``)
    redis: Redis | None = None
    clock: Callable[[], float] = time.monotonic  # for expiry and deadlines
    wallclock: Callable[[], float] = time.time

    @property
    def prices(self) -> PriceCatalog:
        return PriceCatalog(self.config)


class StageFactory(Protocol):
    """Builds one configured stage; raises ``ConfigError`` (via ``options.fail``) for bad options."""

    default_slot: str

    def build(self, options: Reader, environment: StageEnvironment) -> Stage: ...


@dataclass(frozen=True, slots=True)
class BuiltStages:
    by_slot: Mapping[str, tuple[Stage, ...]] = field(default_factory=lambda: MappingProxyType({s: () for s in STAGE_SLOTS}))

    def slot(self, name: str) -> tuple[Stage, ...]:
        return self.by_slot.get(name, ())


def scoped(stage: Stage, spec: StageConfig) -> Stage:
    """``stage`` for requests it is configured for; others pass straight through."""
    if not spec.models and not spec.tenants and not spec.keys:
        return stage

    def wrap(next_handler: Handler) -> Handler:
        inner = stage(next_handler)

        async def handle(request: Request) -> Response:
            applies = (
                (not spec.models or request.model in spec.models) and (not spec.tenants or request.tenant in spec.tenants)
                and (not spec.keys or (request.policy is not None and request.policy.key_id in spec.keys))
            )
            return await (inner if applies else next_handler)(request)

        return handle

    return wrap


def build_stages(config: FleetConfig, environment: StageEnvironment, registry: Mapping[str, StageFactory]) -> BuiltStages:
    """Every configured stage, in its slot; an unknown kind or a bad option fails here, at startup."""
    slots: dict[str, list[Stage]] = {s: [] for s in STAGE_SLOTS}
    for spec in config.stages:
        factory = registry.get(spec.kind)
        if factory is None:
            raise ConfigError(config.source, f"{spec.path}.kind", f"unknown stage {spec.kind!r} (known: {', '.join(sorted(registry))})")
        options = Reader(config.source, f"{spec.path}.options", dict(spec.options))
        stage = factory.build(options, environment)
        options.reject_unknown()
        slots[spec.slot or factory.default_slot].append(scoped(stage, spec))
    return BuiltStages(MappingProxyType({k: tuple(v) for k, v in slots.items()}))
