"""Does compiling the request path as it stands make the gateway cheaper? Cython over the unchanged modules, beside the interpreter and the floor.

    .venv/bin/python bench/compiled_gateway.py [--rounds 3] [--seconds 5] [--latency-ms 50]

Copies ``src/`` to a temporary folder and compiles the request path's modules
there with Cython 3 in pure-Python mode (no type declarations added, the
source unchanged): every module of ``api``, ``pipeline``, ``economics``,
``scheduling``, ``observe``, ``reliability``, ``store`` and ``routing``, the
OpenAI-compatible backend, the backend base and registry, ``protocol`` and
``errors``. Cython is installed on first use into ``bench/.venv-cython`` (the
project does not depend on it). Then it starts the fake upstream, the floor
(bench/floor_proxy.py), modelyard as shipped (interpreted) and modelyard with
the compiled copy first on ``PYTHONPATH`` (extension modules), all on
bench/gateway.py's production path, and measures each with wrk at 1 and at 50
connections, the servers alternated within each round: p50, requests per
second and the server's CPU milliseconds per request (medians over rounds,
with ranges).

Why: the gateway's CPU per request is about 3x the floor's and the profile
shows no single hot spot (bench/cprofile_gateway.py), so "compile the
request path" is the obvious next lever. This measures the cheap version of
it, compiling the Python that exists, before anyone plans a rewrite.

Writes bench/results/compiled_gateway.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway  # noqa: E402
from _common import ROOT, free_port, machine, start, stop, table, write_result  # noqa: E402

CYTHON_VERSION = "3.3.1"
CYTHON_VENV = ROOT / "bench" / ".venv-cython"
PACKAGES = ("api", "pipeline", "economics", "scheduling", "observe", "reliability", "store", "routing")
SINGLE_MODULES = ("backends/openai_compat.py", "backends/base.py", "backends/registry.py", "protocol.py", "errors.py")
BUILD = """
import sys
from Cython.Build import cythonize
from setuptools import setup
modules = sys.argv[1:]
setup(ext_modules=cythonize(modules, language_level=3, nthreads=2, quiet=True), script_args=["build_ext", "--inplace", "-j", "2"])
"""


def ensure_cython() -> Path:
    """bench/.venv-cython's python, with Cython and setuptools (installed on first use)."""
    python = CYTHON_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(CYTHON_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"cython=={CYTHON_VERSION}", "setuptools"], check=True)
    return python


def compiled_copy(tmp: Path) -> tuple[Path, int, float]:
    """A copy of src/ with the request path compiled in place: its path, the module count and the build's seconds."""
    python = ensure_cython()
    copy = tmp / "compiled-src"
    shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    package = copy / "modelyard"
    modules = [str(p.relative_to(copy)) for name in PACKAGES for p in sorted((package / name).glob("*.py")) if p.name != "__init__.py"]
    modules += [f"modelyard/{name}" for name in SINGLE_MODULES]
    (tmp / "build.py").write_text(BUILD)
    began = time.monotonic()
    subprocess.run([str(python), str(tmp / "build.py"), *modules], cwd=copy, check=True, stdout=(tmp / "build.log").open("wb"), stderr=subprocess.STDOUT)
    built = len(list(package.rglob("*.so")))
    if built != len(modules):
        raise RuntimeError(f"built {built} extension modules of {len(modules)}; see {tmp / 'build.log'}")
    return copy, built, time.monotonic() - began


def start_modelyard(up_port: int, tmp: Path, name: str, pythonpath: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / f"{name}.yaml"
    config.write_text(gateway.MODELYARD_CONFIG.format(port=up_port))
    port = free_port()
    env = {"MODELYARD_MASTER_KEY": gateway.MASTER_KEY} | ({"PYTHONPATH": str(pythonpath)} if pythonpath else {})
    process = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / f"data-{name}"), "--log-level", "warning"],
                    tmp / f"{name}.log", f"http://127.0.0.1:{port}/readyz", env=env)
    return process, f"http://127.0.0.1:{port}"


def loaded_compiled(pid: int) -> bool:
    """Whether the server really runs the compiled modules (its memory maps hold the copy's dispatch extension)."""
    return "compiled-src/modelyard/pipeline/dispatch." in Path(f"/proc/{pid}/maps").read_text()


def measure(args: argparse.Namespace, tmp: Path, copy: Path) -> dict[str, Any]:
    wrk_bin = gateway.ensure_wrk()
    up_port = free_port()
    upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", str(args.latency_ms), "--tokens", "16"], tmp / "up.log",
                     f"http://127.0.0.1:{up_port}/v1/models")
    processes: list[subprocess.Popen[bytes]] = [upstream]
    try:
        floor, floor_url = gateway.start_floor(up_port, tmp)
        interpreted, interpreted_url = start_modelyard(up_port, tmp, "interpreted", None)
        compiled, compiled_url = start_modelyard(up_port, tmp, "compiled", copy)
        processes += [floor, interpreted, compiled]
        assert compiled.pid is not None and interpreted.pid is not None
        if not loaded_compiled(compiled.pid) or loaded_compiled(interpreted.pid):
            raise RuntimeError("the compiled server does not run the compiled modules (or the interpreted one does)")
        targets = {"direct": (f"http://127.0.0.1:{up_port}", None, "unused"), "floor": (floor_url, floor.pid, "unused"),
                   "interpreted": (interpreted_url, interpreted.pid, gateway.tenant_key(interpreted_url)),
                   "compiled": (compiled_url, compiled.pid, gateway.tenant_key(compiled_url))}
        scripts = {}
        for name, (url, _, key) in targets.items():
            scripts[name] = tmp / f"post-{name}.lua"
            scripts[name].write_text(gateway.WRK_SCRIPT.format(body=json.dumps(gateway.BODY), key=key))
            gateway.wrk(wrk_bin, url, 10, 2, scripts[name])  # warm-up
        points: dict[str, list[dict[str, float]]] = {}
        for concurrency in (1, 50):
            for round_no in range(args.rounds):
                for name, (url, pid, _) in targets.items():
                    before = gateway.cpu_seconds(pid) if pid else 0.0
                    point = gateway.wrk(wrk_bin, url, concurrency, args.seconds, scripts[name])
                    if pid:
                        point["cpu_ms_per_request"] = (gateway.cpu_seconds(pid) - before) * 1000 / max(1.0, point["rps"] * args.seconds)
                    points.setdefault(f"{name}_c{concurrency}", []).append(point)
                    print(f"  c{concurrency:<3} round {round_no + 1}  {name:<12} {point['rps']:8.1f} req/s  p50 {point['p50_ms']:6.2f} ms  "
                          f"cpu {point.get('cpu_ms_per_request', float('nan')):.3f} ms/request", flush=True)
        return {key: gateway.median_point(value) for key, value in points.items()}
    finally:
        for process in processes:
            stop(process)


def summarise(points: dict[str, Any]) -> dict[str, Any]:
    def get(key: str, field: str) -> float:
        return float(points[key][field])

    out: dict[str, Any] = {}
    for name in ("floor", "interpreted", "compiled"):
        out[f"{name}_cpu_ms_per_request_c50"] = get(f"{name}_c50", "cpu_ms_per_request")
        out[f"{name}_rps_c50"] = get(f"{name}_c50", "rps")
        out[f"{name}_added_p50_ms_c1"] = round(get(f"{name}_c1", "p50_ms") - get("direct_c1", "p50_ms"), 3)
    out["compiled_over_interpreted_cpu_c50"] = round(out["compiled_cpu_ms_per_request_c50"] / out["interpreted_cpu_ms_per_request_c50"], 3)
    out["interpreted_over_floor_cpu_c50"] = round(out["interpreted_cpu_ms_per_request_c50"] / out["floor_cpu_ms_per_request_c50"], 3)
    out["compiled_over_floor_cpu_c50"] = round(out["compiled_cpu_ms_per_request_c50"] / out["floor_cpu_ms_per_request_c50"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the servers alternated in each (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of wrk per server per point (default 5)")
    parser.add_argument("--latency-ms", type=int, default=50, help="the fake upstream's latency before its answer (default 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        copy, built, build_s = compiled_copy(tmp)
        print(f"compiled {built} modules with Cython {CYTHON_VERSION} in {build_s:.0f} s")
        points = measure(args, tmp, copy)
    result = {"config": {"rounds": args.rounds, "seconds": args.seconds, "latency_ms": args.latency_ms, "cython": CYTHON_VERSION,
                         "compiled_modules": built, "build_s": round(build_s, 1)},
              "machine": machine(), "summary": summarise(points), "points": points}
    summary = result["summary"]
    rows = [("system", "CPU ms/request c50", "req/s c50", "added p50 ms c1")]
    for name in ("floor", "interpreted", "compiled"):
        rows.append((name, f"{summary[f'{name}_cpu_ms_per_request_c50']:.3f}", f"{summary[f'{name}_rps_c50']:.0f}", f"{summary[f'{name}_added_p50_ms_c1']:+.2f}"))
    print(table(rows))
    print(f"compiled / interpreted CPU at c50: {summary['compiled_over_interpreted_cpu_c50']:.3f}")
    print(write_result("compiled_gateway", result))


if __name__ == "__main__":
    main()
