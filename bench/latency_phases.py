"""Where the latency that a gateway adds at concurrency 1 goes: each request cut into phases, modelyard beside the floor.

    .venv/bin/python bench/latency_phases.py [--latency-ms 50] [--seconds 15] [--rounds 2]

Starts the fake upstream and three servers in front of it: the bare floor
proxy (bench/floor_proxy.py), modelyard on bench/gateway.py's production path
(the default ``upstream_streaming``: the upstream streams even when the client
does not), and the same with whole answers (``when_client_streams``). Each
server runs with a small probe (a ``sitecustomize`` module on its
``PYTHONPATH``; the code under test is not edited) that stamps every request
at six points on the server's own clock:

    before_upstream   the app gets the request -> the upstream call starts (aiohttp's ``_request``)
    upstream_headers  the upstream call starts -> its status and headers are in
    upstream_body     headers in -> the upstream response is released (its body read)
    after_upstream    released -> the client's last body chunk is handed to the server
    last_send         handing over that last chunk
    after_last_byte   the last chunk sent -> the app returns (off the client's clock,
                      but the loop is busy: a next request on it waits)

wrk at one connection drives each server for ``--seconds`` in turn, the servers
alternated within each of ``--rounds``; the first 20 requests of each run are
dropped as warm-up. The result is each phase's median (and p90) per server,
its difference from the floor's, and wrk's p50 beside the probe's
app-entry-to-last-byte median as a check. The probe's own cost (a few
microseconds per request) falls on every server alike. wrk also measures the
upstream alone, asked as the floor asks it and asked to stream (as
modelyard's default path asks it, whatever the client asked): the difference
is the upstream's own cost of streaming, which the default path pays and the
floor does not.

``--learned`` adds bench/gateway.py's learned fleet on one more server and
measures the learned ``auto`` alias against a plain model on it (the alias's
cost, phase by phase; the route embedding falls in "before_upstream").

``--points`` stamps the first call of chosen functions in each request (as
milliseconds from the app's entry), to cut a phase finer; each stamp costs
about a microsecond.

Writes bench/results/latency_phases.json (``--learned`` adds ``_learned`` to the name, ``--points`` ``_points``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway  # noqa: E402
from _common import ENV, free_port, machine, median, percentile, start, stop, table, write_result  # noqa: E402

BENCH = Path(__file__).resolve().parent
DIRECT = {"direct": gateway.BODY, "direct_stream": gateway.BODY | {"stream": True, "stream_options": {"include_usage": True}}}
# The learned targets name their model in gateway.LEARNED_CONFIG's fleet; the alias keeps no prompt vectors (embedding_cache: 0).
TARGET_MODELS = {"learned_plain": {"model": "smollm2-135m"}, "learned_auto": {"model": "auto-uncached"}}  # no kept vectors: it embeds every time
PHASES = ("before_upstream", "upstream_headers", "upstream_body", "after_upstream", "last_send", "after_last_byte")

PROBE = '''
"""The latency probe of bench/latency_phases.py: stamps each request; SIGUSR2 writes the stamps as JSON."""
import json, os, signal, time
import aiohttp

clock = time.perf_counter
records = []
current = {}

original_request = aiohttp.ClientSession._request
async def _request(self, *args, **kwargs):
    current.setdefault("upstream_start", clock())
    response = await original_request(self, *args, **kwargs)
    current.setdefault("upstream_headers", clock())
    return response
aiohttp.ClientSession._request = _request

original_release = aiohttp.ClientResponse.release
def release(self):
    current.setdefault("upstream_released", clock())
    return original_release(self)
aiohttp.ClientResponse.release = release

def probe(cls):
    original = cls.__call__
    async def __call__(self, scope, receive, send):
        global current
        if scope["type"] != "http":
            return await original(self, scope, receive, send)
        current = stamps = {"entry": clock()}
        async def stamped_send(message):
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                stamps["last_send_start"] = clock()
                await send(message)
                stamps["last_send_end"] = clock()
            else:
                await send(message)
        await original(self, scope, receive, stamped_send)
        stamps["exit"] = clock()
        records.append(stamps)
    cls.__call__ = __call__

def written(*_):
    with open(os.environ["PHASE_PROBE_OUT"], "w") as out:
        json.dump(records, out)
    records.clear()
signal.signal(signal.SIGUSR2, written)

def point(spec):
    """Wrap one callable ("module:Qual.name") to stamp its first call in each request, as "at <spec>"."""
    import functools, importlib
    module_name, qualname = spec.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    @functools.wraps(original)
    def stamped(*args, **kwargs):
        current.setdefault("at " + spec, clock())
        return original(*args, **kwargs)
    setattr(owner, name, stamped)

if os.environ.get("PHASE_PROBE_TARGET") == "floor":
    import sys
    sys.path.insert(0, os.environ["PHASE_PROBE_BENCH"])
    import floor_proxy
    probe(floor_proxy.FloorProxy)
else:
    from modelyard.api.middleware import RequestContextMiddleware
    probe(RequestContextMiddleware)
    for spec in filter(None, os.environ.get("PHASE_PROBE_POINTS", "").split(",")):
        point(spec)
'''


def phases_of(stamps: dict[str, float]) -> dict[str, float] | None:
    """One request's phases in milliseconds (None: it never reached the upstream or never finished)."""
    if not {"upstream_start", "upstream_headers", "last_send_end", "exit"} <= stamps.keys():
        return None
    released = stamps.get("upstream_released", stamps["upstream_headers"])
    points = [stamps["entry"], stamps["upstream_start"], stamps["upstream_headers"], released,
              stamps["last_send_start"], stamps["last_send_end"], stamps["exit"]]
    out = {name: (later - earlier) * 1000 for name, earlier, later in zip(PHASES, points[:-1], points[1:], strict=True)}
    out["entry_to_last_byte"] = (stamps["last_send_end"] - stamps["entry"]) * 1000
    for key, value in stamps.items():
        if key.startswith("at "):  # --points: milliseconds from the app's entry
            out[key] = (value - stamps["entry"]) * 1000
    return out


def start_servers(up_port: int, tmp: Path, probe_dir: Path, points: str, learned: bool) -> dict[str, tuple[subprocess.Popen[bytes], str, str, Path]]:
    """The floor and the modelyard variants, each with the probe: target name -> (process, url, key, stamps file)."""
    servers: dict[str, tuple[subprocess.Popen[bytes], str, str, Path]] = {}
    port = free_port()
    out = tmp / "floor.json"
    floor = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); import floor_proxy; floor_proxy.main()",
         "--port", str(port), "--upstream", f"http://127.0.0.1:{up_port}"],
        stdout=(tmp / "floor.log").open("wb"), stderr=subprocess.STDOUT,
        env=ENV | {"PYTHONPATH": str(probe_dir), "PHASE_PROBE_TARGET": "floor", "PHASE_PROBE_BENCH": str(BENCH), "PHASE_PROBE_OUT": str(out)},
    )
    servers["floor"] = (floor, f"http://127.0.0.1:{port}", "unused", out)
    _wait_floor(floor, servers["floor"][1], tmp / "floor.log")
    for name, template in (("modelyard", gateway.MODELYARD_CONFIG), ("modelyard_whole", gateway.WHOLE_CONFIG)):
        config = tmp / f"{name}.yaml"
        config.write_text(template.format(port=up_port))
        port = free_port()
        out = tmp / f"{name}.json"
        process = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / f"data-{name}"), "--log-level", "warning"],
                        tmp / f"{name}.log", f"http://127.0.0.1:{port}/readyz",
                        env={"MODELYARD_MASTER_KEY": gateway.MASTER_KEY, "PYTHONPATH": str(probe_dir), "PHASE_PROBE_OUT": str(out),
                             "PHASE_PROBE_POINTS": points})
        url = f"http://127.0.0.1:{port}"
        servers[name] = (process, url, gateway.tenant_key(url), out)
    if learned:  # one server, two targets: the plain model and the learned alias over it
        config = tmp / "learned.yaml"
        config.write_text(gateway.LEARNED_CONFIG.format(port=up_port))
        port = free_port()
        out = tmp / "learned.json"
        process = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / "data-learned"), "--log-level", "warning"],
                        tmp / "learned.log", f"http://127.0.0.1:{port}/readyz",
                        env={"MODELYARD_MASTER_KEY": gateway.MASTER_KEY, "PYTHONPATH": str(probe_dir), "PHASE_PROBE_OUT": str(out),
                             "PHASE_PROBE_POINTS": points})
        url = f"http://127.0.0.1:{port}"
        key = gateway.tenant_key(url)
        servers["learned_plain"] = servers["learned_auto"] = (process, url, key, out)
    return servers


def _wait_floor(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the floor proxy exited; see {log}")
        try:
            if httpx.post(url + "/v1/chat/completions", json=gateway.BODY, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the floor proxy did not become ready")


def collect(process: subprocess.Popen[bytes], out: Path) -> list[dict[str, float]]:
    """Ask the probe for its stamps (SIGUSR2) and wait for the file."""
    out.unlink(missing_ok=True)
    os.kill(process.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if out.exists():
            try:
                return json.loads(out.read_text())
            except json.JSONDecodeError:  # still being written
                pass
        time.sleep(0.05)
    raise RuntimeError(f"no stamps from pid {process.pid}")


def summarise(runs: dict[str, list[dict[str, float]]], wrk_p50: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, phases in runs.items():
        row: dict[str, Any] = {"requests": len(phases), "wrk_p50_ms": median(wrk_p50[name])}
        for phase in (*PHASES, "entry_to_last_byte"):
            values = [p[phase] for p in phases]
            row[f"{phase}_p50_ms"] = round(median(values) or 0.0, 3)
            row[f"{phase}_p90_ms"] = round(percentile(values, 90) or 0.0, 3)
        stamped = sorted({key for p in phases for key in p if key.startswith("at ")}, key=lambda k: median([p[k] for p in phases if k in p]) or 0.0)
        if stamped:
            row["points_p50_ms_from_entry"] = {key[3:]: round(median([p[key] for p in phases if key in p]) or 0.0, 3) for key in stamped}
        out[name] = row
    for name in DIRECT:
        out[name] = {"wrk_p50_ms": median(wrk_p50[name])}
    out["upstream_streaming_cost_p50_ms"] = round((median(wrk_p50["direct_stream"]) or 0.0) - (median(wrk_p50["direct"]) or 0.0), 3)
    floor = out["floor"]
    for name in ("modelyard", "modelyard_whole"):
        out[name]["over_floor_p50_ms"] = {phase: round(out[name][f"{phase}_p50_ms"] - floor[f"{phase}_p50_ms"], 3)
                                          for phase in (*PHASES, "entry_to_last_byte")}
        out[name]["over_floor_p50_ms"]["wrk_p50"] = round(out[name]["wrk_p50_ms"] - floor["wrk_p50_ms"], 3)
    if "learned_auto" in out:
        plain, auto = out["learned_plain"], out["learned_auto"]
        auto["over_plain_p50_ms"] = {phase: round(auto[f"{phase}_p50_ms"] - plain[f"{phase}_p50_ms"], 3) for phase in (*PHASES, "entry_to_last_byte")}
        auto["over_plain_p50_ms"]["wrk_p50"] = round(auto["wrk_p50_ms"] - plain["wrk_p50_ms"], 3)
    return out


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    wrk_bin = gateway.ensure_wrk()
    probe_dir = tmp / "probe"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    up_port = free_port()
    upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", str(args.latency_ms), "--tokens", "16"], tmp / "up.log",
                     f"http://127.0.0.1:{up_port}/v1/models")
    servers: dict[str, tuple[subprocess.Popen[bytes], str, str, Path]] = {}
    try:
        servers = start_servers(up_port, tmp, probe_dir, args.points, args.learned)
        scripts = {}
        for name, (process, url, key, out) in servers.items():
            scripts[name] = tmp / f"post-{name}.lua"
            scripts[name].write_text(gateway.WRK_SCRIPT.format(body=json.dumps(gateway.BODY | TARGET_MODELS.get(name, {})), key=key))
            gateway.wrk(wrk_bin, url, 10, 2, scripts[name])  # warm-up
            collect(process, out)  # and its stamps dropped
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        wrk_p50: dict[str, list[float]] = {name: [] for name in (*servers, *DIRECT)}
        direct_url = f"http://127.0.0.1:{up_port}"
        for name, body in DIRECT.items():
            scripts[name] = tmp / f"post-{name}.lua"
            scripts[name].write_text(gateway.WRK_SCRIPT.format(body=json.dumps(body), key="unused"))
        for round_no in range(args.rounds):
            for name in DIRECT:  # the upstream alone, asked as the floor asks it and as modelyard's default path asks it
                wrk_p50[name].append(gateway.wrk(wrk_bin, direct_url, 1, args.seconds, scripts[name])["p50_ms"])
                print(f"  round {round_no + 1}  {name:<16}  wrk p50 {wrk_p50[name][-1]:.2f} ms", flush=True)
            for name, (process, url, _, out) in servers.items():
                point = gateway.wrk(wrk_bin, url, 1, args.seconds, scripts[name])
                phases = [p for p in map(phases_of, collect(process, out)[20:]) if p is not None]
                runs[name] += phases
                wrk_p50[name].append(point["p50_ms"])
                print(f"  round {round_no + 1}  {name:<16} {len(phases):4d} requests  wrk p50 {point['p50_ms']:.2f} ms", flush=True)
    finally:
        for process in {id(p): p for p, *_ in servers.values()}.values():
            stop(process)
        stop(upstream)
    return {"config": {"latency_ms": args.latency_ms, "seconds": args.seconds, "rounds": args.rounds, "concurrency": 1, "points": args.points,
                       "learned": args.learned},
            "machine": machine(), **summarise(runs, wrk_p50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=int, default=50, help="the fake upstream's latency before its answer (default 50)")
    parser.add_argument("--seconds", type=int, default=15, help="seconds of wrk per server per round (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the servers alternated in each (default 2)")
    parser.add_argument("--learned", action="store_true", help="also the learned `auto` alias against a plain model on one server "
                        "(bench/gateway.py's learned fleet: the route embedding on ONNX int8)")
    parser.add_argument("--points", default="", help="extra stamps in modelyard, comma-separated module:Qual.name callables "
                        "(each call's first time in a request, as ms from the app's entry), e.g. modelyard.api.parse:chat_request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    names = ("floor", "modelyard", "modelyard_whole")
    rows: list[tuple[str, ...]] = [("phase (p50 ms)", *names, "modelyard - floor", "whole - floor")]
    for phase in (*PHASES, "entry_to_last_byte"):
        rows.append((phase, *(f"{result[n][f'{phase}_p50_ms']:.3f}" for n in names),
                     f"{result['modelyard']['over_floor_p50_ms'][phase]:+.3f}", f"{result['modelyard_whole']['over_floor_p50_ms'][phase]:+.3f}"))
    rows.append(("wrk p50 (client)", *(f"{result[n]['wrk_p50_ms']:.3f}" for n in names),
                 f"{result['modelyard']['over_floor_p50_ms']['wrk_p50']:+.3f}", f"{result['modelyard_whole']['over_floor_p50_ms']['wrk_p50']:+.3f}"))
    print(table(rows))
    if "learned_auto" in result:
        over = result["learned_auto"]["over_plain_p50_ms"]
        rows = [("phase (p50 ms)", "plain model", "learned auto", "auto - plain")]
        for phase in (*PHASES, "entry_to_last_byte", "wrk_p50"):
            key = "wrk_p50_ms" if phase == "wrk_p50" else f"{phase}_p50_ms"
            rows.append((phase, f"{result['learned_plain'][key]:.3f}", f"{result['learned_auto'][key]:.3f}", f"{over[phase]:+.3f}"))
        print(table(rows))
    for name in ("modelyard", "modelyard_whole", "learned_plain", "learned_auto"):
        if name not in result:
            continue
        if "points_p50_ms_from_entry" in result[name]:
            print(table([(f"{name}: first call", "p50 ms from entry")] + [(k, f"{v:.3f}") for k, v in result[name]["points_p50_ms_from_entry"].items()]))
    print(f"the upstream alone: p50 {result['direct']['wrk_p50_ms']:.3f} ms; asked to stream (as modelyard's default path asks it): "
          f"{result['direct_stream']['wrk_p50_ms']:.3f} ms ({result['upstream_streaming_cost_p50_ms']:+.3f})")
    print(write_result("latency_phases" + ("_learned" if args.learned else "") + ("_points" if args.points else ""), result))


if __name__ == "__main__":
    main()
