"""DESIGN.md's layer rule: api → pipeline → (routing, scheduling, economics) → backends → fleet/core."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "modelyard"

# A layer may import itself and anything to its right, never to its left.
ORDER = ["cli", "server", "training", "api", "observe", "pipeline", "routing", "scheduling", "economics", "reliability", "backends", "store", "fleet", "testing"]
PEERS = {"routing", "scheduling", "economics", "reliability"}  # side by side; none imports another
CORE = {"errors", "protocol", "config", "__init__"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[str]:
    return [name for name in _all_imports(path, absolute_only=True) if name == "modelyard" or name.startswith("modelyard.")]


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in root.rglob("*.py"):
        module = "modelyard." + ".".join(path.relative_to(root).with_suffix("").parts)
        own = layer_of(module)
        for target in imports(path):
            other = layer_of(target)
            if other in CORE or other == own:
                continue
            if own in CORE:
                bad.append(f"{module} (core) imports {target}")
            elif own in PEERS and other in PEERS:
                bad.append(f"{module} imports its peer {target}")
            elif own in ORDER and other in ORDER and ORDER.index(other) < ORDER.index(own):
                bad.append(f"{module} ({own}) imports {target} ({other}), which is above it")
            elif own == "testing" or (other == "testing" and own != "cli"):
                bad.append(f"{module} imports {target}: test helpers stand apart")
    return bad


def test_imports_point_one_way() -> None:
    assert violations() == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    for relative, source in {
        "backends/bad.py": "from modelyard.api.app import create_app\n",  # upward
        "routing/peer.py": "import modelyard.scheduling.scheduler\n",  # between peers
        "errors.py": "from modelyard.pipeline import stages\n",  # core importing a layer
        "api/fine.py": "from modelyard.pipeline.stages import build_pipeline\nfrom modelyard.errors import NotFound\nfrom . import render\n",
    }.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(source)
    found = violations(tmp_path)
    assert len(found) == 3
    assert any("backends.bad" in v and "above it" in v for v in found)
    assert any("routing.peer" in v and "peer" in v for v in found)
    assert any("(core)" in v for v in found)


def test_router_and_scheduler_do_no_io() -> None:
    forbidden = {"httpx", "asyncio", "socket", "subprocess", "sqlite3", "aiosqlite", "asyncpg", "redis", "open"}
    for folder in ("routing", "scheduling", "reliability", "economics"):
        for path in (PACKAGE / folder).rglob("*.py"):
            names = {n.split(".")[0] for n in _all_imports(path)}
            assert not names & forbidden, f"{path} imports {names & forbidden}"


def _all_imports(path: Path, absolute_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and (node.level == 0 or not absolute_only):
            out.append(node.module)
    return out
