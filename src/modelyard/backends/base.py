"""The backend contract every adapter implements, and what adapters are built from."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Protocol, TypeVar, runtime_checkable

from modelyard.config import ConfigError, DeploymentConfig, ModelConfig
from modelyard.protocol import Chunk, Embeddings, ModelCall


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an adapter can do, so the API can reject what it can't up front."""

    chat: bool = False
    completion: bool = False
    embeddings: bool = False
    tools: bool = False
    logprobs: bool = False
    json_schema: bool = False


@dataclass(frozen=True, slots=True)
class Health:
    """A deployment's state as seen by its adapter."""

    ready: bool
    detail: str = ""
    workers: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class BackendContext:
    """Process-wide facts an adapter needs to build itself."""

    models_dir: Path
    threads_per_worker: int = 1
    config_source: str = "<config>"


class Backend(Protocol):
    """One deployment's adapter. Errors leave it only as ``ModelyardError``."""

    capabilities: Capabilities

    async def start(self) -> None:
        """Load models / spawn workers / open pools. Raises on fatal setup errors."""

    def generate(self, call: ModelCall) -> AsyncIterator[Chunk]:
        """Stream a generation; the last chunk has finish_reason and usage."""

    async def embed(self, texts: list[str]) -> Embeddings:
        """Embed texts in order."""

    def health(self) -> Health:
        """Current readiness, without I/O."""

    async def aclose(self) -> None:
        """Release everything; in-flight generations end."""


@runtime_checkable
class TokenCounter(Protocol):
    """An optional second face of a backend whose engine has the model's tokenizer at hand."""

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """How many tokens each text is for this model (no special tokens); ``ModelyardError`` when it cannot say."""
        ...


class BackendFactory(Protocol):
    """The class-level constructor the registry looks up."""

    def __call__(
        self, deployment: DeploymentConfig, model: ModelConfig, context: BackendContext
    ) -> Backend: ...


OptionsT = TypeVar("OptionsT")


def build_options(
    cls: type[OptionsT], options: Mapping[str, Any], where: str, source: str
) -> OptionsT:
    """Build an adapter's frozen options dataclass from the deployment's extra fields.

    Types are checked against the dataclass annotations; unknown fields and
    missing required fields are :class:`ConfigError` naming the field.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(source, f"{where}.{key}", f"unknown field for this backend (known: {', '.join(sorted(fields))})")
        if not _type_ok(value, hints[key]):
            raise ConfigError(source, f"{where}.{key}", f"expected {_type_name(hints[key])}, got {value!r}")
        values[key] = value
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in values:
            raise ConfigError(source, f"{where}.{name}", "is required for this backend")
    return cls(**values)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
