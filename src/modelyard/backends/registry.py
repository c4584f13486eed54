"""Backend adapters by name. Adding one is a line here, never a branch elsewhere."""

from __future__ import annotations

import importlib
from typing import cast

from modelyard.backends.base import BackendFactory
from modelyard.config import DeploymentConfig

BACKENDS: dict[str, str] = {
    "llamacpp": "modelyard.backends.llamacpp:LlamaCppBackend",
    "llamacpp_server": "modelyard.backends.llamacpp_server:LlamaServerBackend",
    "openai": "modelyard.backends.openai_compat:OpenAICompatBackend",
    "sentence-transformers": "modelyard.backends.sentence_embeddings:SentenceTransformersBackend",
}


def backend_factory(name: str) -> BackendFactory:
    """The adapter class registered under ``name``; KeyError lists the known names."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r} (known: {', '.join(sorted(BACKENDS))})") from None
    module_name, _, attr = target.partition(":")
    return cast(BackendFactory, getattr(importlib.import_module(module_name), attr))


def local_processes(deployment: DeploymentConfig) -> int:
    """Processes of the deployment that compute on this machine's cores (remote adapters: none)."""
    count = getattr(backend_factory(deployment.backend), "local_processes", None)
    return int(count(deployment)) if count is not None else 0


def deployment_slots(deployment: DeploymentConfig) -> int:
    """Requests the deployment serves at once: its adapter's ``slots(deployment)`` if it says, else ``max_concurrency``."""
    slots = getattr(backend_factory(deployment.backend), "slots", None)
    return int(slots(deployment)) if slots is not None else deployment.max_concurrency
