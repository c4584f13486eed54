"""What OpenTelemetry tracing costs the gateway: bench/gateway.py's modelyard with traces off and on, alternated.

    .venv/bin/python bench/gateway.py --tracing [--rounds 3] [--seconds 10]

Two modelyard servers on bench/gateway.py's configuration (API keys, limits,
budgets, ledger) in front of the 50 ms fake upstream; one exports every
request's spans (server, GenAI call, attempt) over OTLP/HTTP to a receiver on
loopback (an HTTP server in this process that counts what arrives and decodes
a sample). Each round measures both, in alternating order: p50 latency at one
client (what tracing adds to a request) and, at 50 clients, requests per
second and the gateway's CPU milliseconds per request. Reports medians and the
spread over rounds; writes bench/results/gateway_tracing.json.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

from _common import free_port, machine, median, start, stop, table, write_result


class Sink(http.server.ThreadingHTTPServer):
    posts = 0
    bytes = 0
    spans = 0
    names: set[str]


class SinkHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        assert isinstance(self.server, Sink)
        self.server.posts += 1
        self.server.bytes += len(body)
        if self.server.posts <= 3:  # decode a sample: the spans are real OTLP
            from google.protobuf import json_format
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            export = ExportTraceServiceRequest()
            json_format.Parse(body, export)  # modelyard posts OTLP/JSON: a field the schema lacks fails here
            spans = [s for r in export.resource_spans for sc in r.scope_spans for s in sc.spans]
            self.server.spans += len(spans)
            self.server.names |= {s.name for s in spans}
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def run_tracing(gateway: Any, rounds: int, seconds: int, tmp: Path) -> dict[str, Any]:
    wrk_bin = gateway.ensure_wrk()
    sink = Sink(("127.0.0.1", free_port()), SinkHandler)
    sink.names = set()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    up_port = free_port()
    upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", "50", "--tokens", "16"], tmp / "up.log", f"http://127.0.0.1:{up_port}/v1/models")
    config = tmp / "my.yaml"
    config.write_text(gateway.MODELYARD_CONFIG.format(port=up_port))
    servers, scripts = {}, {}
    try:
        for name, extra in (("off", []), ("on", ["--otlp-endpoint", f"http://127.0.0.1:{sink.server_address[1]}"])):
            port = free_port()
            servers[name] = (start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / f"data-{name}"), "--log-level", "warning", *extra],
                                   tmp / f"my-{name}.log", f"http://127.0.0.1:{port}/readyz", env={"MODELYARD_MASTER_KEY": gateway.MASTER_KEY}), f"http://127.0.0.1:{port}")
            scripts[name] = tmp / f"post-{name}.lua"
            scripts[name].write_text(gateway.WRK_SCRIPT.format(body=json.dumps(gateway.BODY), key=gateway.tenant_key(servers[name][1])))
            gateway.wrk(wrk_bin, servers[name][1], 10, 2, scripts[name])  # warm-up
        runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for i in range(rounds):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                process, url = servers[name]
                c1 = gateway.wrk(wrk_bin, url, 1, seconds, scripts[name])
                before = gateway.cpu_seconds(process.pid)
                c50 = gateway.wrk(wrk_bin, url, 50, seconds, scripts[name])
                cpu_ms = (gateway.cpu_seconds(process.pid) - before) * 1000 / max(1.0, c50["rps"] * seconds)
                runs[name].append({"p50_ms_c1": c1["p50_ms"], "p99_ms_c1": c1["p99_ms"], "rps_c50": c50["rps"], "cpu_ms_c50": cpu_ms,
                                   "errors": c1["errors"] + c50["errors"]})
                print(f"  round {i + 1}  tracing {name:<3}  c1 p50 {c1['p50_ms']:.3f} ms  c50 {c50['rps']:.1f} req/s  {cpu_ms:.3f} ms CPU/request", flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)
        stop(upstream)
        sink.shutdown()
    return {"runs": runs, "sink": {"posts": sink.posts, "bytes": sink.bytes, "sampled_spans": sink.spans, "span_names": sorted(sink.names)}}


def report(raw: dict[str, Any], rounds: int, seconds: int) -> None:
    runs = raw["runs"]
    summary: dict[str, Any] = {}
    for field in ("p50_ms_c1", "p99_ms_c1", "rps_c50", "cpu_ms_c50"):
        for name in ("off", "on"):
            values = [r[field] for r in runs[name]]
            summary[f"{field}_{name}"] = {"median": median(values), "range": [min(values), max(values)]}
    added = [on["p50_ms_c1"] - off["p50_ms_c1"] for on, off in zip(runs["on"], runs["off"], strict=True)]
    cpu = [on["cpu_ms_c50"] - off["cpu_ms_c50"] for on, off in zip(runs["on"], runs["off"], strict=True)]
    summary["added_p50_ms_c1"] = {"median": median(added), "per_round": added}
    summary["added_cpu_ms_per_request"] = {"median": median(cpu), "per_round": cpu}
    summary["goal_added_p50_le_0_2ms"] = (median(added) or 0.0) <= 0.2
    rows = [("metric", "tracing off (median, range)", "tracing on (median, range)")]
    for field in ("p50_ms_c1", "p99_ms_c1", "rps_c50", "cpu_ms_c50"):
        off, on = summary[f"{field}_off"], summary[f"{field}_on"]
        rows.append((field, f"{off['median']:.3f} ({off['range'][0]:.3f}-{off['range'][1]:.3f})", f"{on['median']:.3f} ({on['range'][0]:.3f}-{on['range'][1]:.3f})"))
    print(table(rows))
    print(f"added p50 at c1: {summary['added_p50_ms_c1']['median']:.3f} ms (per round {', '.join(f'{a:.3f}' for a in added)}); "
          f"added CPU: {summary['added_cpu_ms_per_request']['median']:.3f} ms per request; spans exported: {raw['sink']['posts']} posts, {raw['sink']['bytes']} bytes")
    path = write_result("gateway_tracing", {"machine": machine(), "rounds": rounds, "seconds": seconds, "summary": summary} | raw)
    print(f"wrote {path}")
