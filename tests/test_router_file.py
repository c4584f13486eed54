"""The router file: a round trip keeps every decision, the shipped `auto` router loads, bad files fail at startup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelyard.config.defaults import default_fleet
from modelyard.pipeline import router_file
from modelyard.pipeline.route_inputs import RouterFileError, load_learned
from modelyard.routing.learned import LearnedRouter


def small_router(link: str, use_knn: bool) -> LearnedRouter:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    quality = np.stack([(emb[:, 0] > 0), np.ones(60, dtype=bool)], axis=1).astype(np.float32)
    fit = LearnedRouter.fit_logistic if link == "logistic" else LearnedRouter.fit_linear
    return LearnedRouter(("cheap", "strong"), np.array([1.0, 5.0], dtype=np.float32), emb, quality, k=8, linear=fit(emb, quality, 1.0), link=link, use_knn=use_knn)


@pytest.mark.parametrize(("link", "use_knn"), [("logistic", True), ("identity", True), ("logistic", False)])
def test_round_trip_keeps_predictions(tmp_path: Path, link: str, use_knn: bool) -> None:
    router = small_router(link, use_knn)
    router_file.save(router, tmp_path / "r.npz", {"target": 0.8})
    loaded, header = router_file.load(tmp_path / "r.npz")
    assert (loaded.link, loaded.use_knn, header["target"]) == (link, use_knn, 0.8)
    queries = router.embeddings[:10]
    # Training vectors are stored as float16: predictions agree to that precision.
    assert np.allclose(loaded.predict(queries), router.predict(queries), atol=2e-2)


def test_not_a_router_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", header=np.array('{"format": "other"}'))
    with pytest.raises(ValueError, match="not a modelyard router file"):
        router_file.load(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="no builtin router 'nope'"):
        router_file.resolve("builtin:nope")


def test_shipped_auto_router_fits_the_default_fleet() -> None:
    routers = load_learned(default_fleet())
    assert set(routers["auto"].models) == {"smollm2-135m", "qwen2.5-0.5b"}
    assert routers["auto"].embeddings.shape[1] == 384  # MiniLM, the fleet's embedding model


def test_a_router_for_other_models_is_refused_before_startup(tmp_path: Path) -> None:
    router_file.save(small_router("logistic", True), tmp_path / "r.npz", {})
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "models:\n"
        "  smollm2-135m: {kind: chat, deployments: [{backend: llamacpp_server, model_file: 'builtin:smollm2-135m'}]}\n"
        "  minilm-l6: {kind: embedding, deployments: [{backend: sentence-transformers, model_path: 'builtin:all-minilm-l6-v2'}]}\n"
        "aliases:\n"
        f"  auto: {{targets: [smollm2-135m], strategy: learned, embedding_model: minilm-l6, router_file: '{tmp_path / 'r.npz'}'}}\n"
    )
    with pytest.raises(RouterFileError, match="trained for cheap, strong"):
        from modelyard.config import load_config

        load_learned(load_config(fleet))
    result = subprocess.run([sys.executable, "-m", "modelyard.cli", "check", "--config", str(fleet)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "trained for cheap, strong" in result.stderr and "Traceback" not in result.stderr
    # serve reads the file once, before any model loads: one line and exit 3, in seconds.
    serve = [sys.executable, "-m", "modelyard.cli", "serve", "--config", str(fleet), "--port", "0", "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "cannot start: aliases.auto.router_file: trained for cheap, strong" in result.stderr
    assert "Traceback" not in result.stderr and "starting" not in result.stderr


@pytest.mark.parametrize(("trained", "served", "problem"), [
    (3, None, "trained on vectors from its first 3 layers, but minilm's deployments embed with layers: none"),
    (None, 3, "trained on vectors from the whole model, but minilm's deployments embed with layers: 3"),
    (3, 2, "its first 3 layers.*layers: 2"),
    (3, 3, None),
    (None, None, None),
])
def test_a_router_must_be_served_by_the_encoder_depth_it_was_trained_on(tmp_path: Path, trained: int | None, served: int | None,
                                                                         problem: str | None) -> None:
    router = small_router("logistic", True)
    router_file.save(router, tmp_path / "r.npz", {} if trained is None else {"embedding_layers": trained})
    layers = "" if served is None else f", layers: {served}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "models:\n"
        "  cheap: {kind: chat, deployments: [{backend: openai, base_url: 'http://127.0.0.1:9/v1'}]}\n"
        "  strong: {kind: chat, deployments: [{backend: openai, base_url: 'http://127.0.0.1:9/v1'}]}\n"
        f"  minilm: {{kind: embedding, deployments: [{{backend: sentence-transformers, model_path: 'builtin:all-minilm-l6-v2', runtime: onnx-int8{layers}}}]}}\n"
        "aliases:\n"
        f"  auto: {{targets: [cheap, strong], strategy: learned, embedding_model: minilm, router_file: '{tmp_path / 'r.npz'}'}}\n"
    )
    from modelyard.config import load_config

    if problem is None:
        assert set(load_learned(load_config(fleet))) == {"auto"}
    else:
        with pytest.raises(RouterFileError, match=problem):
            load_learned(load_config(fleet))
