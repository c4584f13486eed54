"""The trained router's file: a NumPy ``.npz`` of plain arrays (loaded with ``allow_pickle=False``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.routing.learned import LearnedRouter
from modelyard.routing.lexical import LexicalProbe
from modelyard.routing.task_prior import TaskPrior

FORMAT = "modelyard-router/2"
LINKS = ("identity", "logistic")
BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "routers"


def resolve(reference: str) -> Path:
    """``builtin:<name>`` is a router shipped in the package (``modelyard/data/routers/<name>.npz``); anything else is a path."""
    if reference.startswith(BUILTIN_PREFIX):
        name = reference[len(BUILTIN_PREFIX):]
        path = BUILTIN_DIR / f"{name}.npz"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.npz"))) or "none"
            raise FileNotFoundError(f"no builtin router {name!r} (shipped: {known})")
        return path
    return Path(reference).expanduser()


def save(router: LearnedRouter, path: Path, meta: dict[str, object]) -> None:
    header = json.dumps({"format": FORMAT, "models": list(router.models), "k": router.k, "prior_weight": router.prior_weight, "sharpness": router.sharpness, "link": router.link, "use_knn": router.use_knn,
                         "task_weight": router.task_weight, "tasks": list(router.task_prior.names) if router.task_prior else [], **meta})
    arrays: dict[str, Any] = {
        "header": np.array(header), "costs": router.costs.astype(np.float32),
        "embeddings": router.embeddings.astype(np.float16), "quality": router.quality.astype(np.float16),
    }
    if router.linear is not None:
        arrays["linear"] = router.linear.astype(np.float32)
    if router.lexical is not None:
        arrays.update(
            lexical_buckets=router.lexical.buckets.astype(np.int32), lexical_idf=router.lexical.idf.astype(np.float32),
            lexical_weights=router.lexical.weights.astype(np.float32),
        )
    if router.word_band is not None:
        arrays["word_band"] = router.word_band.astype(np.float32)
    if router.task_prior is not None:
        arrays.update(task_centroids=router.task_prior.centroids.astype(np.float32), task_quality=router.task_prior.quality.astype(np.float32))
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)


def _lexical(data: Any) -> LexicalProbe | None:
    if "lexical_buckets" not in data.files:
        return None
    return LexicalProbe(data["lexical_buckets"].astype(np.int64), data["lexical_idf"].astype(np.float32), data["lexical_weights"].astype(np.float32))


def _task_prior(data: Any, header: dict[str, Any]) -> TaskPrior | None:
    if "task_centroids" not in data.files:
        return None
    return TaskPrior(tuple(header.get("tasks", [])), data["task_centroids"].astype(np.float32), data["task_quality"].astype(np.float32))


def load(path: Path) -> tuple[LearnedRouter, dict[str, object]]:
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data["header"]))
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: not a modelyard router file (format {header.get('format')!r})")
        if header.get("link", "identity") not in LINKS:
            raise ValueError(f"{path}: unknown probe link {header.get('link')!r} (known: {', '.join(LINKS)})")
        router = LearnedRouter(
            models=tuple(header["models"]), costs=data["costs"].astype(np.float32), embeddings=data["embeddings"].astype(np.float32),
            quality=data["quality"].astype(np.float32), k=int(header["k"]), prior_weight=float(header["prior_weight"]), sharpness=float(header["sharpness"]),
            linear=data["linear"].astype(np.float32) if "linear" in data.files else None, link=str(header.get("link", "identity")), use_knn=bool(header.get("use_knn", True)),
            lexical=_lexical(data), task_prior=_task_prior(data, header), task_weight=float(header.get("task_weight", 0.5)),
            word_band=data["word_band"].astype(np.float32) if "word_band" in data.files else None,
        )
    return router, header
