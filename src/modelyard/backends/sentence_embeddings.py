"""Local sentence-transformers embedding models, run off the event loop.

The model loads once at start. Calls run on one dedicated thread (torch
releases the GIL while it computes), so the event loop keeps serving.
Concurrent callers' texts are encoded in batches of ``batch_size``.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator

from modelyard.backends.base import BackendContext, Capabilities, Health, build_options
from modelyard.config import DeploymentConfig, ModelConfig
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


class SentenceTransformersBackend:
    """The ``sentence-transformers`` adapter."""

    @staticmethod
    def local_processes(deployment: DeploymentConfig) -> int:
        """It computes on this machine's cores, in this process."""
        return 1

    def __init__(self, deployment: DeploymentConfig, model: ModelConfig, context: BackendContext) -> None:
        where = f"models.{model.name}.deployments[{model.deployments.index(deployment)}]"
        self.options = build_options(SentenceTransformersOptions, deployment.options, where, context.config_source)
        self.deployment = deployment
        self.model = model
        self.context = context
        self.capabilities = Capabilities(embeddings=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{deployment.name}")
        self._model: Any = None

    async def start(self) -> None:
        path = artifacts.resolve(self.options.model_path, self.context.models_dir)
        threads = self.options.threads or self.context.threads_per_worker
        self._model = await asyncio.get_running_loop().run_in_executor(self._executor, _load, str(path), threads)

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


def _load(path: str, threads: int) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, threads))
    return SentenceTransformer(path, device="cpu", local_files_only=True)
