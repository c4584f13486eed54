"""The ONNX Runtime path for sentence-transformers models: the published vectors, exported once, refused where unsupported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.backends.base import BackendContext
from modelyard.backends.onnx_encoder import OnnxEncoder, UnsupportedModel, graph_path, read_pipeline
from modelyard.backends.registry import backend_factory
from modelyard.config import ConfigError, parse_config
from modelyard.fleet.artifacts import resolve

TEXTS = ["the cat sat on the mat", "Which gas do plants absorb from the air?", "def add(a, b):\n    return a + b", "x"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve("builtin:all-minilm-l6-v2", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return np.asarray(model.encode(TEXTS, convert_to_numpy=True, show_progress_bar=False))


@pytest.mark.parametrize(("precision", "least_cosine"), [("fp32", 0.99999), ("int8", 0.9)])
def test_vectors_match_pytorchs(model_dir: Path, reference: np.ndarray, tmp_path: Path, precision: str, least_cosine: float) -> None:
    encoder = OnnxEncoder(model_dir, tmp_path, precision)
    vectors, counts = encoder.encode(TEXTS)
    assert vectors.shape == reference.shape
    cosines = (vectors * reference).sum(axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= least_cosine
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the model's Normalize module
    assert counts[3] == 3  # [CLS] x [SEP]
    assert counts == [len(encoder.tokenizer.encode(t).ids) for t in TEXTS]


def test_int8_vectors_do_not_depend_on_the_batch(model_dir: Path, tmp_path: Path) -> None:
    encoder = OnnxEncoder(model_dir, tmp_path, "int8")
    together, _ = encoder.encode(TEXTS)
    alone = np.vstack([encoder.encode([t])[0] for t in TEXTS])
    assert np.array_equal(together, alone)


def test_the_graph_is_exported_once_and_reused(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = OnnxEncoder(model_dir, tmp_path, "fp32")
    assert first.path == graph_path(model_dir, tmp_path, "fp32") and first.path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary file left behind

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr("modelyard.backends.onnx_encoder.export", no_export)
    again = OnnxEncoder(model_dir, tmp_path, "fp32")
    assert np.array_equal(again.encode(TEXTS)[0], first.encode(TEXTS)[0])


def test_two_encoders_built_at_once_on_an_empty_cache(model_dir: Path, tmp_path: Path) -> None:
    # The server builds its embedding deployments' encoders in threads; on a fresh machine both exported at once and
    # one start failed with "cannot import name 'AutoModel'" (transformers' lazy imports are not thread-safe).
    # A fresh interpreter, so that transformers is not imported yet.
    script = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from modelyard.backends.onnx_encoder import OnnxEncoder\n"
        "errors = []\n"
        "def build(precision):\n"
        "    try:\n"
        "        OnnxEncoder(Path(sys.argv[1]), Path(sys.argv[2]), precision)\n"
        "    except Exception as error:\n"
        "        errors.append(repr(error))\n"
        "threads = [threading.Thread(target=build, args=(p,)) for p in ('int8', 'fp32', 'fp32')]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print(errors)\n"
        "sys.exit(1 if errors else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(model_dir), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert sorted(p.name.rsplit("-", 1)[-1] for p in tmp_path.glob("*.onnx")) == ["fp32.onnx", "int8.onnx"]


def test_other_pooling_is_refused(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cls-model"
    shutil.copytree(model_dir, copy)
    pooling = copy / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps(json.loads(pooling.read_text()) | {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(UnsupportedModel, match="mean pooling only"):
        read_pipeline(copy)


def test_onnxruntime_loads_after_the_cache_index_library() -> None:
    # usearch 2.26.x made importing onnxruntime after it a SIGSEGV; the server imports both, in either order.
    for first, second in (("usearch.index", "onnxruntime"), ("onnxruntime", "usearch.index")):
        result = subprocess.run([sys.executable, "-c", f"import {first}; import {second}"], capture_output=True, timeout=120)
        assert result.returncode == 0, f"import {first} then {second}: exit {result.returncode}"


def test_an_unknown_runtime_is_a_config_error(tmp_path: Path) -> None:
    config = parse_config({"models": {"m": {"kind": "embedding", "deployments": [
        {"backend": "sentence-transformers", "model_path": "builtin:all-minilm-l6-v2", "runtime": "tensorrt"}]}}})
    model = config.models[0]
    with pytest.raises(ConfigError, match="runtime"):
        backend_factory("sentence-transformers")(model.deployments[0], model, BackendContext(models_dir=tmp_path))


def test_training_features_on_the_served_runtime(tmp_path: Path) -> None:
    from modelyard.training import features

    prompts = ["What is the capital of France?", "Write a function that adds two numbers."]
    served = features.embed(prompts, tmp_path, runtime="onnx-int8")
    trained = features.embed(prompts, tmp_path)
    assert served.shape == trained.shape == (2, 384)
    assert ((served * trained).sum(axis=1) > 0.9).all() and not np.array_equal(served, trained)
    assert len(list(tmp_path.glob("minilm-onnx-int8-*.npy"))) == 1  # cached apart from the PyTorch vectors
    with pytest.raises(ValueError, match="runtime"):
        features.embed(["x"], tmp_path, runtime="tensorrt")


def test_a_cut_encoder_is_the_models_first_layers(model_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    transformer: Any = reference[0].auto_model
    encoder = transformer.encoder
    encoder.layer = encoder.layer[:2]  # the same weights, two of six layers
    expected = np.asarray(reference.encode(TEXTS, convert_to_numpy=True, show_progress_bar=False))
    cut = OnnxEncoder(model_dir, tmp_path, "fp32", layers=2)
    vectors, _ = cut.encode(TEXTS)
    cosines = (vectors * expected).sum(axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.99999
    whole = OnnxEncoder(model_dir, tmp_path, "fp32")
    assert cut.path != whole.path and cut.path == graph_path(model_dir, tmp_path, "fp32", 2)  # kept apart in the cache
    assert ((whole.encode(TEXTS)[0] * vectors).sum(axis=1) < 0.99).any()  # a different encoder: routers must be trained on it
    with pytest.raises(ValueError, match="from 1 to the model's 6"):
        OnnxEncoder(model_dir, tmp_path, "fp32", layers=7)


@pytest.mark.parametrize(("runtime", "layers", "problem"), [("torch", 3, "needs an ONNX runtime"), ("onnx-int8", 0, "at least 1")])
def test_layers_need_an_onnx_runtime_and_a_positive_count(tmp_path: Path, runtime: str, layers: int, problem: str) -> None:
    config = parse_config({"models": {"m": {"kind": "embedding", "deployments": [
        {"backend": "sentence-transformers", "model_path": "builtin:all-minilm-l6-v2", "runtime": runtime, "layers": layers}]}}})
    model = config.models[0]
    with pytest.raises(ConfigError, match=problem):
        backend_factory("sentence-transformers")(model.deployments[0], model, BackendContext(models_dir=tmp_path))


def test_training_features_from_a_cut_encoder(tmp_path: Path) -> None:
    from modelyard.training import features

    prompts = ["What is the capital of France?", "Write a function that adds two numbers."]
    cut = features.embed(prompts, tmp_path, runtime="onnx-int8", layers=3)
    assert cut.shape == (2, 384) and not np.array_equal(cut, features.embed(prompts, tmp_path, runtime="onnx-int8"))
    assert len(list(tmp_path.glob("minilm-onnx-int8-3layers-*.npy"))) == 1
    with pytest.raises(ValueError, match="onnx-int8"):
        features.embed(prompts, tmp_path, layers=3)
