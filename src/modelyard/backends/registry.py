"""Backend adapters by name. Adding one is a line here, never a branch elsewhere."""

from __future__ import annotations

import importlib
from typing import cast

from modelyard.backends.base import BackendFactory

BACKENDS: dict[str, str] = {
    "llamacpp": "modelyard.backends.llamacpp:LlamaCppBackend",
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
