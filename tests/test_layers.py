"""DESIGN.md's layer rule: api → pipeline → (routing, scheduling, economics) → backends → fleet/core.

The check fails closed: every module of the package must belong to a known
layer, relative imports are resolved before they are judged, and the pure
layers may import only what cannot do I/O or read a clock.

Which layers may read a clock: the pure layers (``routing``, ``scheduling``,
``economics``, ``reliability``) never do; they take ``now`` as an argument so
the planner can drive them with a virtual clock. Everything from ``pipeline``
outwards (and ``store``, ``backends``, ``fleet``) may read ``time.monotonic``
or ``time.time`` and passes the value in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "modelyard"

# A layer may import itself and anything to its right, never to its left.
ORDER = ["cli", "server", "training", "planning", "api", "observe", "pipeline", "routing", "scheduling", "economics", "reliability", "shaping", "backends", "store", "fleet", "data", "testing"]
PEERS = {"routing", "scheduling", "economics", "reliability", "shaping"}  # side by side; none imports another
CORE = {"errors", "protocol", "config", "tasks", "__init__"}
PURE = PEERS
# What a pure layer may import from outside the package: data and maths, nothing that reaches a disk, a socket, a thread or a clock.
PURE_ALLOWED = {
    "__future__", "typing", "collections", "dataclasses", "enum", "math", "statistics", "random", "re", "bisect", "heapq",
    "itertools", "functools", "operator", "abc", "datetime", "hashlib", "json", "numpy", "string", "unicodedata", "zlib", "jsonschema", "ipaddress",
}
CLOCK_CALLS = {"now", "utcnow", "today", "monotonic", "time", "perf_counter"}


class UnknownLayer(Exception):
    """A module or package the layer map does not name: add it to ORDER or CORE on purpose."""


def layer_of(module: str) -> str:
    parts = module.split(".")
    layer = parts[1] if len(parts) > 1 else "__init__"
    if layer not in CORE and layer not in ORDER:
        raise UnknownLayer(f"{module}: package {layer!r} is in no layer (tests/test_layers.py ORDER or CORE)")
    return layer


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(("modelyard", *parts))


def resolved_imports(path: Path, root: Path) -> list[str]:
    """Every module ``path`` imports, relative ones made absolute (``from . import x`` counts as ``pkg.x``)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append(node.module or "")
                continue
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
            found += [stem] if node.module else [f"{stem}.{alias.name}" for alias in node.names]
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module)
        for target in resolved_imports(path, root):
            if target.split(".")[0] != "modelyard":
                if own in PURE and target.split(".")[0] not in PURE_ALLOWED:
                    bad.append(f"{module} ({own}, pure) imports {target}, which may do I/O or read a clock")
                continue
            other = layer_of(target)
            if other in CORE or other == own:
                continue
            if own in CORE:
                bad.append(f"{module} (core) imports {target}")
            elif own in PEERS and other in PEERS:
                bad.append(f"{module} imports its peer {target}")
            elif ORDER.index(other) < ORDER.index(own):
                bad.append(f"{module} ({own}) imports {target} ({other}), which is above it")
            elif own == "testing" or (other == "testing" and own != "cli"):
                bad.append(f"{module} imports {target}: test helpers stand apart")
        if own in PURE:
            bad += [f"{module} ({own}, pure) calls {call}()" for call in clock_calls(path)]
    return bad


def clock_calls(path: Path) -> list[str]:
    """Calls such as ``datetime.now()`` or ``time.monotonic()``: a pure layer is handed the time instead."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_CALLS:
            calls.append(ast.unparse(node.func))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            calls.append("open")
    return calls


def test_imports_point_one_way() -> None:
    assert violations() == []


def plant(root: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(source)
    return root


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    found = violations(plant(tmp_path, {
        "backends/bad.py": "from modelyard.api.app import create_app\n",  # upward
        "backends/relative.py": "from ..pipeline import stages\n",  # upward, written relatively
        "backends/__init__.py": "from ..api import app\n",  # a package's own __init__, relatively
        "routing/peer.py": "import modelyard.scheduling.scheduler\n",  # between peers
        "routing/sibling.py": "from ..economics.cost import request_cost\n",  # between peers, relatively
        "errors.py": "from modelyard.pipeline import stages\n",  # core importing a layer
        "api/fine.py": "from modelyard.pipeline.stages import build_pipeline\nfrom modelyard.errors import NotFound\nfrom . import render\n",
    }))
    assert len(found) == 6, found
    assert sum("above it" in v for v in found) == 3
    assert sum("peer" in v for v in found) == 2
    assert any("(core)" in v for v in found)


@pytest.mark.parametrize("source", [
    "import os\n", "from pathlib import Path\n", "import socket\n", "import subprocess\n", "import threading\n", "import time\n",
    "import aiohttp\n", "import httpx\n", "import asyncpg\n", "from redis import Redis\n", "import asyncio\n", "import sqlite3\n",
    "from datetime import datetime\nx = datetime.now()\n", "data = open('f').read()\n",
])
def test_a_pure_layer_may_not_do_io_or_read_a_clock(tmp_path: Path, source: str) -> None:
    found = violations(plant(tmp_path, {"scheduling/impure.py": source}))
    assert len(found) == 1 and "pure" in found[0], found


def test_an_unknown_package_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownLayer, match="planner"):
        violations(plant(tmp_path, {"planner/simulate.py": "from modelyard.errors import NotFound\n"}))
