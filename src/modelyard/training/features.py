"""Prompt features: normalised MiniLM embeddings, cached on disk by content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelyard.fleet.artifacts import resolve
from modelyard.routing.text import routing_text


def embed(prompts: list[str], cache_dir: Path, batch_size: int = 64, runtime: str = "torch", layers: int | None = None) -> npt.NDArray[np.float32]:
    """Normalised MiniLM vectors of each prompt's :func:`routing_text` (what the server embeds too).

    ``runtime``: ``torch`` (sentence-transformers) or ``onnx-int8`` (what the default fleet's
    ``minilm-l2-int8`` serves the router with, at 2 layers). ``layers`` (``onnx-int8`` only): the model cut
    to its first N transformer layers, as a deployment with ``layers: N`` embeds.
    """
    if layers is not None and runtime != "onnx-int8":
        raise ValueError("layers needs the onnx-int8 runtime")
    texts = [routing_text(p) for p in prompts]
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    name = runtime if layers is None else f"{runtime}-{layers}layers"
    cache = cache_dir / (f"minilm-{digest}.npy" if runtime == "torch" else f"minilm-{name}-{digest}.npy")
    if cache.exists():
        return np.load(cache, allow_pickle=False)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = resolve("builtin:all-minilm-l6-v2", cache_dir)
    if runtime == "torch":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    elif runtime == "onnx-int8":
        from modelyard.backends.onnx_encoder import OnnxEncoder, onnx_cache_dir

        vectors = OnnxEncoder(model_dir, onnx_cache_dir(), "int8", layers=layers).encode(texts, batch_size)[0]
    else:
        raise ValueError(f"runtime must be torch or onnx-int8, not {runtime!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors.astype(np.float32), allow_pickle=False)
    return vectors.astype(np.float32)
