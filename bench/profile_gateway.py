"""Where the gateway's CPU goes: py-spy flame graphs of the production path under wrk load.

    .venv/bin/python bench/profile_gateway.py [--seconds 6] [--top 25] [--tracing | --whole]

Starts the fake upstream (0 ms and 50 ms variants, a fixed 16-token
completion) and modelyard in front of it with the production path on (a
tenant's API key, its rate limits and budget, routing, scheduler, breakers,
metrics, access log, ledger; ``--tracing`` adds OpenTelemetry spans exported
to a local OTLP receiver; ``--whole`` fetches non-streamed answers in one
response, ``upstream_streaming: when_client_streams``), drives it with wrk at concurrency 1 and 50, and
samples the gateway process with py-spy while the load runs. For each point
it keeps a flame graph and the collapsed stacks in
``bench/results/profiles/`` and prints the functions with the most self time
and modelyard's functions by inclusive time. Writes
``bench/results/profile_gateway[_tracing].json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, free_port, start, stop, table, write_result  # noqa: E402
from gateway import BODY, MASTER_KEY, MODELYARD_CONFIG, WHOLE_CONFIG, WRK_SCRIPT, ensure_wrk, tenant_key  # noqa: E402

PROFILES = RESULTS / "profiles"
SAMPLE_RATE = 250
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: `make install` installs the dev extra")
    return found


def record(binary: str, pid: int, seconds: int, fmt: str, out: Path) -> None:
    subprocess.run(
        [binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(SAMPLE_RATE), "--format", fmt, "--output", str(out), "--nonblocking"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def load(wrk_bin: str, url: str, concurrency: int, seconds: int, script: Path) -> threading.Thread:
    threads = 1 if concurrency == 1 else 2
    command = [wrk_bin, "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "-s", str(script), url + "/v1/chat/completions"]
    thread = threading.Thread(target=subprocess.run, args=(command,), kwargs={"capture_output": True, "check": True})
    thread.start()
    return thread


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw format: ``frame;frame;... count`` per line, outermost frame first."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str, with_line: bool) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path}:{match['line']})" if with_line and match["line"] else f"{match['function']} ({path})"


def summarise(stacks: list[tuple[list[str], int]], top: int) -> dict[str, object]:
    total = sum(count for _, count in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        self_time[short(frames[-1], with_line=True)] += count
        for name in {short(f, with_line=False) for f in frames if "modelyard/" in f}:
            inclusive[name] += count
    return {
        "samples": total,
        "self_top": [(name, round(100 * n / total, 1)) for name, n in self_time.most_common(top)],
        "modelyard_inclusive_top": [(name, round(100 * n / total, 1)) for name, n in inclusive.most_common(top)],
    }


def profile_point(binary: str, wrk_bin: str, pid: int, url: str, script: Path, concurrency: int, seconds: int, name: str) -> dict[str, object]:
    """Load for two sampling windows: collapsed stacks first, then the flame graph (py-spy writes one format per run)."""
    thread = load(wrk_bin, url, concurrency, 2 * seconds + 2, script)
    try:
        collapsed = PROFILES / f"{name}.txt"
        record(binary, pid, seconds, "raw", collapsed)
        record(binary, pid, seconds, "flamegraph", PROFILES / f"{name}.svg")
    finally:
        thread.join()
    return parse_collapsed(collapsed.read_text())  # type: ignore[return-value]


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    binary, wrk_bin = py_spy(), ensure_wrk()
    PROFILES.mkdir(parents=True, exist_ok=True)
    prefix = "gateway-tracing" if args.tracing else "gateway-whole" if args.whole else "gateway"
    results: dict[str, object] = {"config": {"seconds_per_sample": args.seconds, "rate_hz": SAMPLE_RATE, "tracing": args.tracing, "whole": args.whole}}
    sink = None
    if args.tracing:
        from gateway_tracing import Sink, SinkHandler

        sink = Sink(("127.0.0.1", free_port()), SinkHandler)
        sink.names = set()
        threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        for latency in (0, 50):
            up_port, my_port = free_port(), free_port()
            upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", str(latency), "--tokens", "16"], tmp / f"up{latency}.log", f"http://127.0.0.1:{up_port}/v1/models")
            config = tmp / f"my{latency}.yaml"
            config.write_text((WHOLE_CONFIG if args.whole else MODELYARD_CONFIG).format(port=up_port))
            serve = ["serve", "--config", str(config), "--port", str(my_port), "--data-dir", str(tmp / f"data{latency}"), "--log-level", "warning"]
            if sink is not None:
                serve += ["--otlp-endpoint", f"http://127.0.0.1:{sink.server_address[1]}"]
            gateway = start(serve, tmp / f"my{latency}.log", f"http://127.0.0.1:{my_port}/readyz", env={"MODELYARD_MASTER_KEY": MASTER_KEY})
            url = f"http://127.0.0.1:{my_port}"
            try:
                script = tmp / "post.lua"
                script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY), key=tenant_key(url)))
                subprocess.run([wrk_bin, "-t", "1", "-c", "10", "-d", "2s", "-s", str(script), url + "/v1/chat/completions"], capture_output=True, check=True)
                for concurrency in (1, 50):
                    name = f"{prefix}-lat{latency}_c{concurrency}"
                    assert gateway.pid is not None
                    stacks = profile_point(binary, wrk_bin, gateway.pid, url, script, concurrency, args.seconds, name)
                    point = summarise(stacks, args.top)  # type: ignore[arg-type]
                    point["flame_graph"] = f"bench/results/profiles/{name}.svg"
                    results[name] = point
                    print(f"\n== {name}: {point['samples']} samples")
                    print(table([("self time", "%")] + [(n, str(p)) for n, p in point["self_top"]]))  # type: ignore[attr-defined]
                    print(table([("modelyard, inclusive", "%")] + [(n, str(p)) for n, p in point["modelyard_inclusive_top"]]))  # type: ignore[attr-defined]
            finally:
                stop(gateway)
                stop(upstream)
    finally:
        if sink is not None:
            sink.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6, help="sampling window per format and point (default 6)")
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    parser.add_argument("--tracing", action="store_true", help="with OpenTelemetry spans exported to a local OTLP receiver")
    parser.add_argument("--whole", action="store_true", help="with upstream_streaming: when_client_streams (non-streamed answers fetched whole)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, Path(tmp))
    path = write_result("profile_gateway_tracing" if args.tracing else "profile_gateway_whole" if args.whole else "profile_gateway", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
