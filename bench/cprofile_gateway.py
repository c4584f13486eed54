"""Where the gateway's CPU goes, per request: a deterministic profile (cProfile) of the event-loop thread under wrk load.

    .venv/bin/python bench/cprofile_gateway.py [--latency-ms 0] [--concurrency 50] [--seconds 10] [--whole] [--top 30]

Starts the fake upstream and ``modelyard serve`` on bench/gateway.py's
production path (``--whole``: with ``upstream_streaming: when_client_streams``)
inside a small launcher that profiles the server's main thread only while the
load runs (SIGUSR1 starts the profiler, SIGUSR2 stops it and writes the
stats), drives it with wrk, and prints each function's own time and
modelyard's functions' inclusive time in microseconds per request (the
profile's seconds divided by the requests wrk completed in the window).

Why beside bench/profile_gateway.py's py-spy flame graphs: a sampling profile
of a process that mostly waits on sockets spreads its samples over the event
loop's idle frame, and small per-request costs vanish into it. py-spy put the
access log at 0.7% of the samples; cProfile put it near a tenth of the request
path, and switching it off (bench/gateway_ablation.py) confirmed the order.
cProfile in turn inflates code with many small Python calls and sees only the
main thread (the embedding executor and SQLite's threads are not in it): read
its microseconds as shares, and measure a change with bench/ab_gateway.py.

Writes bench/results/cprofile_gateway.json and the stats as text in
bench/results/profiles/cprofile-<point>.txt.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ENV, RESULTS, ROOT, free_port, machine, start, stop, table, write_result  # noqa: E402
from gateway import BODY, MASTER_KEY, MODELYARD_CONFIG, WHOLE_CONFIG, WRK_SCRIPT, ensure_wrk, parse_wrk, tenant_key  # noqa: E402

LAUNCHER = """
import cProfile, signal, sys
profile, out = cProfile.Profile(), sys.argv[1]
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
def written(*_):
    profile.disable()
    profile.dump_stats(out)
signal.signal(signal.SIGUSR2, written)
if sys.argv[2] == "floor":
    sys.argv = ["floor_proxy", *sys.argv[3:]]
    sys.path.insert(0, sys.argv.pop())
    from floor_proxy import main
else:
    sys.argv = ["modelyard", *sys.argv[2:]]
    from modelyard.cli import main
sys.exit(main())
"""


MARKERS = ("site-packages/", "src/", "lib/python3.11/")  # where a profiled file's import path starts


def _split(path: str) -> tuple[str, str]:
    """The marker a file's path holds ("" for none) and the path after it."""
    for marker in MARKERS:
        if marker in path:
            return marker, path.split(marker, 1)[1]
    return "", path


def label(path: str, line: int, function: str) -> str:
    return f"{function} ({_split(path)[1]}:{line})"


def package_of(path: str) -> str:
    """The top-level package (or stdlib module) a profiled function belongs to; ``~`` is C builtins."""
    if path == "~":
        return "builtins (C)"
    marker, rest = _split(path)
    if not marker:
        return path
    parts = rest.removesuffix(".py").split("/")
    if marker == "src/":  # modelyard by subpackage: which layers a compile would reach
        return ".".join(parts[:2])
    return parts[0] + (" (stdlib)" if marker == "lib/python3.11/" else "")


def per_request(stats_file: Path, requests: int, top: int) -> dict[str, Any]:
    """Own and inclusive microseconds per request, from the dumped stats."""
    stats = pstats.Stats(str(stats_file))
    rows = stats.stats  # type: ignore[attr-defined]
    total = sum(tottime for (_, _, tottime, _, _) in rows.values())
    own = sorted(((tottime, label(*key)) for key, (_, _, tottime, _, _) in rows.items()), reverse=True)[:top]
    inclusive = sorted(((cumtime, label(*key)) for key, (_, _, _, cumtime, _) in rows.items() if "modelyard/" in key[0]), reverse=True)[:top]
    scale = 1e6 / max(1, requests)
    packages: dict[str, float] = {}
    for key, (_, _, tottime, _, _) in rows.items():
        packages[package_of(key[0])] = packages.get(package_of(key[0]), 0.0) + tottime
    return {
        "requests": requests,
        "profiled_us_per_request": round(total * scale, 1),
        "own_us_per_request_by_package": [(name, round(seconds * scale, 1))
                                           for name, seconds in sorted(packages.items(), key=lambda item: -item[1])],
        "own_us_per_request": [(name, round(seconds * scale, 1)) for seconds, name in own],
        "modelyard_inclusive_us_per_request": [(name, round(seconds * scale, 1)) for seconds, name in inclusive],
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    wrk_bin = ensure_wrk()
    up_port, port = free_port(), free_port()
    upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", str(args.latency_ms), "--tokens", "16"], tmp / "up.log",
                     f"http://127.0.0.1:{up_port}/v1/models")
    config = tmp / "gateway.yaml"
    config.write_text((WHOLE_CONFIG if args.whole else MODELYARD_CONFIG).format(port=up_port))
    stats_file = tmp / "gateway.prof"
    launcher = tmp / "launcher.py"
    launcher.write_text(LAUNCHER)
    serve = ["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / "data"), "--log-level", "warning"]
    if args.floor:  # the bench directory goes last: the launcher pops it onto sys.path
        serve = ["floor", "--port", str(port), "--upstream", f"http://127.0.0.1:{up_port}", str(Path(__file__).resolve().parent)]
    gateway = subprocess.Popen([sys.executable, str(launcher), str(stats_file), *serve], stdout=(tmp / "gateway.log").open("wb"),
                               stderr=subprocess.STDOUT, env=ENV | {"MODELYARD_MASTER_KEY": MASTER_KEY}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(gateway, url + ("/v1/chat/completions" if args.floor else "/readyz"), tmp / "gateway.log", post=args.floor)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY), key="floor" if args.floor else tenant_key(url)))
        threads = "1" if args.concurrency == 1 else "2"
        subprocess.run([wrk_bin, "-t", threads, "-c", "10", "-d", "2s", "-s", str(script), url + "/v1/chat/completions"], capture_output=True, check=True)
        os.kill(gateway.pid, signal.SIGUSR1)
        out = subprocess.run([wrk_bin, "-t", threads, "-c", str(args.concurrency), "-d", f"{args.seconds}s", "--latency", "-s", str(script),
                              url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
        os.kill(gateway.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not stats_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        load = parse_wrk(out)
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        point = per_request(stats_file, requests, args.top)
        name = f"{'floor-' if args.floor else ''}{'whole-' if args.whole else ''}lat{args.latency_ms}_c{args.concurrency}"
        text = io.StringIO()
        pstats.Stats(str(stats_file), stream=text).sort_stats("tottime").print_stats(80)
        (RESULTS / "profiles").mkdir(parents=True, exist_ok=True)
        (RESULTS / "profiles" / f"cprofile-{name}.txt").write_text(text.getvalue())
    finally:
        stop(gateway)
        stop(upstream)
    return {"config": {"latency_ms": args.latency_ms, "concurrency": args.concurrency, "seconds": args.seconds, "whole": args.whole,
                       "system": "floor" if args.floor else "modelyard"},
            "machine": machine(), "load": load, "point": name, **point}


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, post: bool = False) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"modelyard exited early; see {log}")
        try:
            answer = httpx.post(url, json=BODY, timeout=1) if post else httpx.get(url, timeout=1)
            if answer.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"modelyard not ready in 120 s; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=int, default=0, help="the fake upstream's latency before its answer (default 0)")
    parser.add_argument("--concurrency", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--seconds", type=int, default=10, help="profiled load window (default 10)")
    parser.add_argument("--whole", action="store_true", help="with upstream_streaming: when_client_streams")
    parser.add_argument("--floor", action="store_true", help="profile bench/floor_proxy.py instead of modelyard (writes cprofile_floor.json)")
    parser.add_argument("--top", type=int, default=30, help="rows per table (default 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    print(f"{result['requests']} requests, {result['load']['rps']:.0f} req/s under the profiler; "
          f"{result['profiled_us_per_request']} profiled us per request on the main thread")
    print(table([("own time by package", "us/request")] + [(n, str(v)) for n, v in result["own_us_per_request_by_package"][:args.top]]))
    print(table([("own time", "us/request")] + [(n, str(v)) for n, v in result["own_us_per_request"]]))
    print(table([("modelyard, inclusive", "us/request")] + [(n, str(v)) for n, v in result["modelyard_inclusive_us_per_request"]]))
    print(write_result("cprofile_floor" if args.floor else "cprofile_gateway", result))


if __name__ == "__main__":
    main()
