"""A sentence-transformers model run by ONNX Runtime: the same vectors, a fraction of the time.

PyTorch spends much of a prompt's embedding in per-operator overhead. On the
RouterBench routing prompts, one at a time on one core, all-MiniLM-L6-v2
took p50 27.7 ms with PyTorch, 12.8 ms with ONNX Runtime and 6.7 ms with int8
weights (``bench/embed_runtimes.py``). The graph is exported from the
packaged weights on first use into a per-user cache (:func:`onnx_cache_dir`),
named by the weights' digest, so later starts load it in well under a second
and nothing is downloaded.

Only models whose pipeline is a transformer, mean pooling and optionally a
normalisation (the MiniLM family) are supported; :class:`UnsupportedModel`
says why another is not.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# usearch 2.26.x made this import a SIGSEGV when usearch was loaded first (pyproject pins 2.25.0;
# tests/test_onnx_embeddings.py imports the two in both orders).
import onnxruntime
from tokenizers import Tokenizer

log = logging.getLogger("modelyard.embeddings")
PRECISIONS = ("fp32", "int8")
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# One export at a time per process: transformers' lazy imports are not thread-safe (two encoders built at
# once on a fresh machine failed with "cannot import name 'AutoModel'"), and two exports would only share the cores.
_EXPORTING = threading.Lock()


class UnsupportedModel(ValueError):
    """The model's sentence-transformers pipeline is not transformer + mean pooling (+ normalise)."""


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What the sentence-transformers modules do after the transformer."""

    max_length: int
    normalize: bool


def read_pipeline(model_dir: Path) -> Pipeline:
    """The model's pooling and normalisation, from its sentence-transformers files."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise UnsupportedModel(f"{model_dir}: modules {kinds}; the ONNX runtime supports Transformer, Pooling (mean) and Normalize")
    pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or any(v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"):
        raise UnsupportedModel(f"{model_dir}: the ONNX runtime supports mean pooling only")
    settings = json.loads((model_dir / "sentence_bert_config.json").read_text()) if (model_dir / "sentence_bert_config.json").exists() else {}
    return Pipeline(max_length=int(settings.get("max_seq_length", 256)), normalize="Normalize" in kinds)


def onnx_cache_dir() -> Path:
    """Exported graphs are shared by every data directory of this user (``$XDG_CACHE_HOME/modelyard/onnx``): one export per machine."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "modelyard" / "onnx"


def graph_path(model_dir: Path, cache_dir: Path, precision: str, layers: int | None = None) -> Path:
    """Where the exported graph of these exact weights at ``precision`` (cut to ``layers``, if given) is kept."""
    files = tuple((model_dir / name).resolve() for name in ("config.json", "model.safetensors"))
    identity = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    cut = "" if layers is None else f"-{layers}layers"
    return cache_dir / f"{model_dir.parent.name}-{_weights_digest(identity)}{cut}-{precision}.onnx"


def model_layers(model_dir: Path) -> int:
    """How many transformer layers the model has (its ``config.json``)."""
    return int(json.loads((model_dir / "config.json").read_text())["num_hidden_layers"])


@functools.lru_cache(maxsize=8)
def _weights_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    """The first 16 hex digits of the files' SHA-256, once per process for the same files (two deployments share weights)."""
    digest = hashlib.sha256()
    for name, _, _ in files:
        with open(name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def export(model_dir: Path, out: Path, precision: str, layers: int | None = None) -> Path:
    """Export the transformer to ONNX (and quantize its weights to int8 when asked); atomic, so a crash leaves no half file.

    ``layers`` keeps only the first that many transformer layers (the same weights; the rest are not loaded):
    a shallower, faster encoder whose vectors differ from the full model's, so a router must be trained on them.
    """
    import torch
    from transformers import AutoConfig, AutoModel

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    out.parent.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    if layers is not None:
        config.num_hidden_layers = layers  # the deeper layers' weights are left unloaded, as intended
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_pretrained(str(model_dir), config=config, local_files_only=True).eval()
    sample = torch.ones((1, 8), dtype=torch.int64)
    fp32 = out.with_suffix(f".fp32-{os.getpid()}.tmp")
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it fixed; the axes above stay dynamic
        torch.onnx.export(
            LastHiddenState(model), (sample, sample, torch.zeros_like(sample)), str(fp32), input_names=list(INPUTS),
            output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = out.with_suffix(f".int8-{os.getpid()}.tmp")
        quantize_dynamic(str(fp32), str(quantized), weight_type=QuantType.QInt8)
        fp32.unlink()
        quantized.replace(out)
    else:
        fp32.replace(out)
    return out


class OnnxEncoder:
    """Texts in, pooled (and normalised) vectors and token counts out; not thread-safe, one caller at a time."""

    def __init__(self, model_dir: Path, cache_dir: Path, precision: str = "int8", threads: int = 1, layers: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.pipeline = read_pipeline(model_dir)
        self.precision = precision
        if layers is not None and not 1 <= layers <= (available := model_layers(model_dir)):
            raise ValueError(f"layers must be from 1 to the model's {available}, not {layers}")
        path = graph_path(model_dir, cache_dir, precision, layers)
        if not path.exists():
            with _EXPORTING:
                if not path.exists():  # another thread may have exported it while this one waited
                    log.info("exporting %s to ONNX (%s) at %s; later starts reuse it", model_dir.parent.name, precision, path)
                    export(model_dir, path, precision, layers)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.pipeline.max_length)
        self.tokenizer.no_padding()
        self.path = path

    def encode(self, texts: list[str], batch_size: int = 32) -> tuple[npt.NDArray[np.float32], list[int]]:
        """Vectors (n, d) and each text's token count, in ``batch_size`` groups padded to their longest text.

        int8 graphs run one text at a time: their activations are quantized with
        one scale per tensor, so a text's vector would depend on the texts
        batched with it (and a cached or routed text must not).
        """
        if self.precision == "int8":
            batch_size = 1
        encodings = self.tokenizer.encode_batch(texts)
        counts = [len(e.ids) for e in encodings]
        parts = [self._run(encodings[i : i + batch_size]) for i in range(0, len(encodings), batch_size)]
        return np.vstack(parts).astype(np.float32), counts

    def _run(self, encodings: list[Any]) -> npt.NDArray[np.float32]:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = e.attention_mask
            types[row, : len(e.ids)] = e.type_ids
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.pipeline.normalize:
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled
