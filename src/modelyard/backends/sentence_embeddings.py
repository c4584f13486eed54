"""Local sentence-transformers embedding models, run off the event loop.

The model loads once at start. Calls run on one dedicated thread (torch and
ONNX Runtime release the GIL while they compute), so the event loop keeps
serving. Concurrent callers' texts are encoded in batches of ``batch_size``.

``runtime`` picks what computes: ``onnx`` (the default: ONNX Runtime on the
model's exported graph, the same vectors as PyTorch in half the time),
``onnx-int8`` (int8 weights: about 4x faster than PyTorch, vectors within a
cosine of 0.9 or more of the published model's; what the routers use) or
``torch`` (sentence-transformers itself, for models the ONNX path does not
support). ``bench/embed_runtimes.py`` measures all three. ``layers`` (ONNX
runtimes) keeps the model's first N transformer layers: a faster encoder for
a router trained on its vectors (``router train --embedding-layers``;
``bench/encoder_depth.py``).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from modelyard.backends.base import BackendContext, Capabilities, Health, build_options
from modelyard.backends.onnx_encoder import OnnxEncoder, UnsupportedModel, onnx_cache_dir
from modelyard.config import ConfigError, DeploymentConfig, ModelConfig
from modelyard.errors import InvalidRequest, NotReady, UpstreamError
from modelyard.fleet import artifacts
from modelyard.protocol import Chunk, Embeddings, ModelCall


@dataclass(frozen=True, slots=True)
class SentenceTransformersOptions:
    """Fields of a ``backend: sentence-transformers`` deployment."""

    model_path: str
    batch_size: int = 32
    threads: int | None = None
    normalize: bool = False
    runtime: str = "onnx"
    layers: int | None = None  # ONNX runtimes: keep the first N transformer layers (a faster encoder for routers trained on it)


RUNTIMES = ("onnx", "onnx-int8", "torch")


class SentenceTransformersBackend:
    """The ``sentence-transformers`` adapter."""

    @staticmethod
    def local_processes(deployment: DeploymentConfig) -> int:
        """It computes on this machine's cores, in this process."""
        return 1

    def __init__(self, deployment: DeploymentConfig, model: ModelConfig, context: BackendContext) -> None:
        where = f"models.{model.name}.deployments[{model.deployments.index(deployment)}]"
        self.options = build_options(SentenceTransformersOptions, deployment.options, where, context.config_source)
        if self.options.runtime not in RUNTIMES:
            raise ConfigError(context.config_source, f"{where}.runtime", f"{self.options.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.options.layers is not None and (self.options.runtime == "torch" or self.options.layers < 1):
            problem = "needs an ONNX runtime (onnx or onnx-int8)" if self.options.runtime == "torch" else "must be at least 1"
            raise ConfigError(context.config_source, f"{where}.layers", problem)
        self.deployment = deployment
        self.model = model
        self.context = context
        self.capabilities = Capabilities(embeddings=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{deployment.name}")
        self._model: Any = None

    async def start(self) -> None:
        path = artifacts.resolve(self.options.model_path, self.context.models_dir)
        threads = self.options.threads or self.context.threads_per_worker
        loader = _load if self.options.runtime == "torch" else _load_onnx
        self._model = await asyncio.get_running_loop().run_in_executor(self._executor, loader, path, threads, self.options.runtime, self.options.layers)

    def health(self) -> Health:
        return Health(ready=self._model is not None, detail="" if self._model is not None else "loading")

    async def embed(self, texts: list[str]) -> Embeddings:
        if self._model is None:
            raise NotReady(f"deployment {self.deployment.name} is still loading")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, texts)
        except RuntimeError as exc:  # torch reports its failures as RuntimeError
            raise UpstreamError(f"deployment {self.deployment.name}: {exc}") from None

    def _encode(self, texts: list[str]) -> Embeddings:
        if isinstance(self._model, OnnxEncoder):
            vectors, counts = self._model.encode(texts, self.options.batch_size)
            if self.options.normalize:
                vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
            return Embeddings(vectors.tolist(), sum(counts), counts)
        tokens = self._model.tokenizer(texts, truncation=True, max_length=self._model.max_seq_length)["input_ids"]
        vectors = self._model.encode(
            texts, batch_size=self.options.batch_size, normalize_embeddings=self.options.normalize, convert_to_numpy=True, show_progress_bar=False
        )
        counts = [len(t) for t in tokens]
        return Embeddings([v.tolist() for v in vectors], sum(counts), counts)

    async def generate(self, call: ModelCall) -> AsyncIterator[Chunk]:
        raise InvalidRequest(f"model {self.model.name!r} is an embedding model; use /v1/embeddings", param="model")
        yield Chunk()  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model = None


def _load(path: Path, threads: int, runtime: str, layers: int | None) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, threads))
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def _load_onnx(path: Path, threads: int, runtime: str, layers: int | None) -> OnnxEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return OnnxEncoder(path, onnx_cache_dir(), "int8" if runtime == "onnx-int8" else "fp32", threads, layers)
    except UnsupportedModel as exc:
        raise RuntimeError(f"{exc}; set runtime: torch for this model") from None
    except ValueError as exc:  # layers beyond the model's
        raise RuntimeError(str(exc)) from None
