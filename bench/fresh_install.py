"""How long `make test` takes on a fresh clone with an empty pip cache.

    .venv/bin/python bench/fresh_install.py [--commit REV] [--label NAME]

Clones this repository at REV (default HEAD) into a temporary directory,
points pip at an empty cache (PIP_CACHE_DIR), and times `make test` there:
the venv, every download and build, model assembly and the whole suite. The
machine's PostgreSQL and Redis are used when they answer, as on CI. Writes
the seconds into bench/results/fresh_install.json under the label (default:
the commit), keeping earlier labels, so a before/after pair can be measured
one after the other; the labels ``before`` and ``after`` also fill
``fresh_make_test_s_before`` / ``_after`` in bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commit", default="HEAD", help="the revision to clone")
    parser.add_argument("--label", help="name of this measurement in the results file (default: the commit)")
    parser.add_argument("--sync", action="store_true", help="only copy the before/after runs already measured into engine.json")
    args = parser.parse_args()
    if args.sync:
        sync_engine()
        return
    rev = subprocess.run(["git", "rev-parse", args.commit], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "modelyard"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["PIP_CACHE_DIR"] = str(Path(tmp) / "pip-cache")  # empty: every wheel is downloaded or built again
        env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if "/.venv/" not in p)
        started = time.monotonic()
        run = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
    lines = (run.stdout + run.stderr).strip().splitlines()
    tail = [line for line in lines if line.startswith(("FAILED", "ERROR"))] + [line for line in lines if "passed" in line or "failed" in line][-1:]
    if not tail:
        tail = [line for line in lines if not line.startswith("WARNING: Location")][-5:]
    print(f"{rev[:10]}: make test exited {run.returncode} after {seconds:.0f} s")
    print("\n".join(tail))
    path = RESULTS / "fresh_install.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("runs", {})[args.label or rev[:10]] = {
        "commit": rev, "seconds": round(seconds, 1), "exit_code": run.returncode, "tail": tail,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    data["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print("wrote", path)
    sync_engine()


def sync_engine() -> None:
    """The runs labelled before/after, as the engine issue's figures in engine.json (a failed run counts as none)."""
    engine, runs = RESULTS / "engine.json", RESULTS / "fresh_install.json"
    if not engine.exists() or not runs.exists():
        return
    figures = json.loads(engine.read_text())
    measured = json.loads(runs.read_text()).get("runs", {})
    for label in ("before", "after"):
        run = measured.get(label)
        figures[f"fresh_make_test_s_{label}"] = run["seconds"] if run and run["exit_code"] == 0 else None
        figures[f"fresh_make_test_commit_{label}"] = run["commit"] if run else None
    engine.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print("updated", engine)


if __name__ == "__main__":
    main()
