"""The embedded default fleet: what ``modelyard serve`` runs with no config."""

from __future__ import annotations

from typing import Any

from modelyard.config.loader import parse_config
from modelyard.config.schema import FleetConfig

AUTO_QUALITY_TARGET = 0.35  # the cheapest target whose 5-fold CV accuracy on the train split reaches always-qwen's (bench/local_router.py --train)

# Self-hosted prices are per replica-hour; the figures are a small CPU VM's
# share, so the cost accounting has something honest to multiply.
DEFAULT_FLEET: dict[str, Any] = {
    "models": {
        "smollm2-135m": {
            "kind": "chat",
            "context_window": 8192,
            "description": "SmolLM2-135M-Instruct (Q4_1), the cheap chat model",
            "deployments": [
                {
                    "backend": "llamacpp_server",  # llama.cpp's own server: continuous batching, prompt cache
                    "model_file": "builtin:smollm2-135m",
                    "parallel": 4,
                    "n_ctx": 2048,  # per slot; the slots share one KV cache of 8192 tokens
                    "price": {"replica_hour": 0.02},
                }
            ],
        },
        "qwen2.5-0.5b": {
            "kind": "chat",
            "context_window": 8192,  # the model takes 32768; one request here can use the engine's whole cache, (4 + 1) x 2048 tokens
            "description": "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), the stronger chat model",
            "deployments": [
                {
                    "backend": "llamacpp_server",  # llama.cpp's own server: continuous batching, prompt cache
                    "model_file": "builtin:qwen2.5-coder-0.5b",
                    "parallel": 4,
                    "n_ctx": 2048,  # per slot; the slots share one KV cache of 8192 tokens
                    "tools": True,  # its chat template offers tools (<tool_call> JSON)
                    "price": {"replica_hour": 0.04},
                }
            ],
        },
        "minilm-l6": {
            "kind": "embedding",
            "context_window": 256,
            "description": "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions",
            "deployments": [
                {
                    "backend": "sentence-transformers",
                    "model_path": "builtin:all-minilm-l6-v2",
                    "price": {"replica_hour": 0.01},
                }
            ],
        },
        # The route encoder: MiniLM's first 2 of 6 layers with int8 weights (ONNX Runtime). A short prompt embeds in about
        # a third of the whole int8 model's time (bench/encoder_depth.py); builtin:auto is trained on these vectors and
        # routes no worse cross-validated (bench/encoder_depth.py, bench/auto_policy.py).
        "minilm-l2-int8": {
            "kind": "embedding",
            "context_window": 256,
            "description": "all-MiniLM-L6-v2's first 2 layers, int8 weights (ONNX Runtime): the routers' fast embedding",
            "deployments": [
                {
                    "backend": "sentence-transformers",
                    "model_path": "builtin:all-minilm-l6-v2",
                    "runtime": "onnx-int8",
                    "layers": 2,
                    "price": {"replica_hour": 0.01},
                }
            ],
        },
    },
    "aliases": {
        "auto": {
            "targets": ["smollm2-135m", "qwen2.5-0.5b"],
            "description": "the cheapest model predicted to answer well (learned router); code, tools and JSON to the coder model",
            "strategy": "learned",
            # Trained by `modelyard router collect` + `router train` on the fleet's own answers (docs/routing.md).
            "router_file": "builtin:auto",
            "embedding_model": "minilm-l2-int8",
            "quality_target": AUTO_QUALITY_TARGET,
            # Rules decide without an embedding. The code rule is lexical: a cut encoder's similarities cannot tell code
            # from other prompts (bench/intent_separation.py), and the router alone sends short code questions unlike its
            # table's to the cheap model (bench/auto_policy.py).
            "rules": [
                {"name": "tools", "tools": True, "model": "qwen2.5-0.5b"},
                {"name": "json", "json": True, "model": "qwen2.5-0.5b"},
                {"name": "code", "code": True, "model": "qwen2.5-0.5b"},
            ],
        }
    },
}


def default_fleet() -> FleetConfig:
    """The validated embedded default fleet."""
    return parse_config(DEFAULT_FLEET, source="<embedded default fleet>")
