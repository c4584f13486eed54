"""Gateway overhead and throughput: direct vs modelyard vs LiteLLM's proxy, in one run.

    .venv/bin/python bench/gateway.py [--quick]

Starts the fake OpenAI-compatible upstream (a real HTTP server; 50 ms and 0 ms
variants, a fixed 16-token completion), the floor (bench/floor_proxy.py: a bare
pass-through proxy on modelyard's own stack — uvicorn, httptools, uvloop, the
same aiohttp client — with no features: what any Python gateway costs),
modelyard in front of it with its
production features on (API keys: every request authenticates with a tenant's
key and passes its rate limits and budget; routing, scheduler, breakers,
metrics, access log, usage ledger),
the same production path fetching each non-streamed request's answer in one
response (``upstream_streaming: when_client_streams``, row ``modelyard_whole``),
and LiteLLM's proxy (installed by this script into bench/.venv-litellm,
pinned, LITELLM_LOCAL_MODEL_COST_MAP=True) in front of the same upstream.
Load comes from wrk (installed with apt-get if missing). At concurrency 1, 50
and 200 it records throughput, latency percentiles, errors and the proxies'
CPU per request, over ``--point-rounds`` rounds (3; the systems alternate
within each round) reported as the median and range; added latency is
through-gateway minus direct at the same load, and each ratio between two
systems also comes per round, with its range. Streaming: time to first
byte and chunk pacing. Soak: a fixed rate for 5 minutes (30 s with --quick)
with modelyard's RSS and open file descriptors sampled every 10 s. Then, on
the 50 ms upstream alone: the learned ``auto`` alias against the plain model
on one server at concurrency 1 (``--rounds`` alternated rounds; the router's
embedding on MiniLM's first 2 layers, int8, as the default fleet runs it; a new
user turn in every request that the router's word view cannot settle, so the
alias embeds each prompt (and the same with ``lexical_first: false``, what
asking the words first costs such a turn); a new multiple-choice question in
every request that the word view settles, so the alias skips the embedding;
the same new turns through ``auto-l6``, the former default: a router trained
by the run with the former documented command on the whole int8 MiniLM and
served by it, and through the same router on PyTorch (``auto-torch``);
and once more
with the same user turn repeated, as an agent's tool loop sends it, where the
alias routes on its kept vector, and without kept vectors, as runs before
them measured; ``--learned-only`` runs these rows alone
into bench/results/gateway_learned.json), and
the production path with limits and budgets shared through Redis
(``--redis-url``; left out when no Redis answers on 127.0.0.1:6379).
Writes bench/results/gateway.json.

With ``--tracing`` it only compares modelyard with OpenTelemetry traces off
and on (bench/gateway_tracing.py; bench/results/gateway_tracing.json).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ENV, ROOT, free_port, machine, median, percentile, start, stop, table, write_result  # noqa: E402

from modelyard.config.defaults import AUTO_QUALITY_TARGET  # noqa: E402

# 1.110.x declares its proxy extra on a litellm-proxy release that PyPI does not serve.
LITELLM_VERSION = "1.80.0"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
MASTER_KEY = "sk-bench-master"
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}

MODELYARD_CONFIG = """
models:
  fake:
    kind: chat
    deployments:
      - backend: openai
        base_url: http://127.0.0.1:{port}/v1
        max_concurrency: 1024
        max_queue: 1024
        max_connections: 512
"""
LITELLM_CONFIG = """
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: http://127.0.0.1:{port}/v1
      api_key: unused
litellm_settings:
  drop_params: true
general_settings:
  master_key: {key}
"""
# The learned `auto` alias over two fake models (named as the shipped router's models), as the default fleet serves it
# (builtin:auto on MiniLM's first 2 layers, int8, at AUTO_QUALITY_TARGET), and the former default: a router on the whole
# int8 model (trained by each run with the former documented command) and on PyTorch.
LEARNED_CONFIG = """
models:
  smollm2-135m:
    kind: chat
    deployments: [{{backend: openai, base_url: 'http://127.0.0.1:{port}/v1', max_concurrency: 1024, max_queue: 1024, max_connections: 512}}]
  qwen2.5-0.5b:
    kind: chat
    deployments: [{{backend: openai, base_url: 'http://127.0.0.1:{port}/v1', max_concurrency: 1024, max_queue: 1024, max_connections: 512}}]
  minilm-l2-int8:
    kind: embedding
    deployments: [{{backend: sentence-transformers, model_path: 'builtin:all-minilm-l6-v2', runtime: onnx-int8, layers: 2}}]
  minilm-l6-int8:
    kind: embedding
    deployments: [{{backend: sentence-transformers, model_path: 'builtin:all-minilm-l6-v2', runtime: onnx-int8}}]
  minilm-l6-torch:
    kind: embedding
    deployments: [{{backend: sentence-transformers, model_path: 'builtin:all-minilm-l6-v2', runtime: torch}}]
aliases:
  auto: {{targets: [smollm2-135m, qwen2.5-0.5b], strategy: learned, router_file: 'builtin:auto', embedding_model: minilm-l2-int8, quality_target: {target}}}
  auto-embedding-first: {{targets: [smollm2-135m, qwen2.5-0.5b], strategy: learned, router_file: 'builtin:auto', embedding_model: minilm-l2-int8, quality_target: {target}, lexical_first: false}}
  auto-uncached: {{targets: [smollm2-135m, qwen2.5-0.5b], strategy: learned, router_file: 'builtin:auto', embedding_model: minilm-l2-int8, embedding_cache: 0, quality_target: {target}}}
  auto-l6: {{targets: [smollm2-135m, qwen2.5-0.5b], strategy: learned, router_file: '{l6_router}', embedding_model: minilm-l6-int8, quality_target: 0.35}}
  auto-torch: {{targets: [smollm2-135m, qwen2.5-0.5b], strategy: learned, router_file: '{l6_router}', embedding_model: minilm-l6-torch, quality_target: 0.35}}
"""
# The former builtin:auto's documented train command (the whole encoder; bench/auto_policy.py): the auto-l6 and
# auto-torch aliases' router, trained by each run.
L6_TRAIN = ["router", "train", "--data", str(ROOT / "data" / "routing" / "local_outcomes.jsonl"), "--split", "train", "--learner", "knn+logistic+lexical",
            "--target", "0.35", "--embedding-runtime", "onnx-int8"]
# The production path again, fetching a non-streamed request's answer in one response (not the default).
WHOLE_CONFIG = MODELYARD_CONFIG.replace("max_connections: 512", "max_connections: 512\n        upstream_streaming: when_client_streams")
REDIS_URL = "redis://127.0.0.1:6379/0"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or "wrk"


def ensure_litellm() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    return binary


def start_litellm(binary: Path, upstream_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(port=upstream_port, key=MASTER_KEY))
    port = free_port()
    env = dict(ENV, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=MASTER_KEY, LITELLM_LOG="ERROR", DISABLE_ADMIN_UI="True")
    process = subprocess.Popen([str(binary), "--config", str(config), "--port", str(port), "--num_workers", "1"], stdout=(tmp / "litellm.log").open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"litellm exited; see {tmp / 'litellm.log'}")
        try:
            if httpx.post(url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("litellm did not become ready")


def start_floor(upstream_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The bare pass-through proxy (bench/floor_proxy.py), ready when it relays a request."""
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "floor_proxy.py"), "--port", str(port), "--upstream", f"http://127.0.0.1:{upstream_port}"]
    process = subprocess.Popen(command, stdout=(tmp / "floor.log").open("wb"), stderr=subprocess.STDOUT, env=ENV)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the floor proxy exited; see {tmp / 'floor.log'}")
        try:
            if httpx.post(url + "/v1/chat/completions", json=BODY, timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the floor proxy did not become ready")


def wrk(binary: str, url: str, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    threads = 1 if concurrency == 1 else 2
    out = subprocess.run(
        [binary, "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--latency", "-s", str(script), url + "/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    ).stdout
    return parse_wrk(out)


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict[str, float]:
    def ms(text: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(number) * UNITS[unit]

    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for q in ("50", "90", "99"):
        match = re.search(rf"^\s+{q}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        result[f"p{q}_ms"] = ms(match.group(1)) if match else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float(errors.group(1) if errors else 0) + (sum(float(x) for x in socket.groups()) if socket else 0)
    return result


async def stream_timing(url: str, headers: dict[str, str], samples: int) -> dict[str, float | None]:
    ttfb, gaps = [], []
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(samples):
            t0 = time.monotonic()
            last = None
            async with http.stream("POST", url + "/v1/chat/completions", json=BODY | {"stream": True}, headers=headers) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    now = time.monotonic()
                    if last is None:
                        ttfb.append((now - t0) * 1000)
                    else:
                        gaps.append((now - last) * 1000)
                    last = now
    return {"ttfb_p50_ms": median(ttfb), "chunk_gap_p50_ms": median(gaps), "chunk_gap_p99_ms": percentile(gaps, 99)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_stats(pid: int) -> tuple[float, int]:
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def soak(url: str, pid: int, rate: float, seconds: float, key: str) -> dict[str, object]:
    samples: list[tuple[float, float, int]] = []
    errors = 0
    sent = 0
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200), headers={"Authorization": f"Bearer {key}"}) as http:

        async def one() -> None:
            nonlocal errors
            try:
                if (await http.post(url + "/v1/chat/completions", json=BODY)).status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1

        tasks: set[asyncio.Task[None]] = set()
        next_sample = started
        while (now := time.monotonic()) - started < seconds:
            if now >= next_sample:
                rss, fds = process_stats(pid)
                samples.append((round(now - started, 1), round(rss, 1), fds))
                next_sample += 10
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    rss, fds = process_stats(pid)
    samples.append((round(time.monotonic() - started, 1), round(rss, 1), fds))
    warm = samples[1] if len(samples) > 2 else samples[0]  # after the first 10 s of warm-up
    return {
        "rate_rps": rate, "seconds": seconds, "requests": sent, "errors": errors, "samples": samples,
        "rss_growth_pct": round((samples[-1][1] - warm[1]) / warm[1] * 100, 2),
        "fd_first": warm[2], "fd_last": samples[-1][2],
    }


def tenant_key(base: str) -> str:
    """A tenant with generous limits and budget, and a key for it: the production path, not the master key."""
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    httpx.post(base + "/admin/tenants", json={"id": "bench", "rpm": 10_000_000, "tpm": 10_000_000_000}, headers=admin).raise_for_status()
    httpx.post(base + "/admin/tenants/bench/budget", json={"day": 1_000_000}, headers=admin).raise_for_status()
    response = httpx.post(base + "/admin/keys", json={"tenant": "bench", "rpm": 10_000_000}, headers=admin)
    response.raise_for_status()
    return str(response.json()["key"])


def body_script(tmp: Path, name: str, model: str, key: str) -> Path:
    script = tmp / f"post-{name}.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY | {"model": model}), key=key))
    return script


# A new user turn per request ("hello there <word> N": six word pieces, against four for BODY's "hello there"), so a
# learned alias embeds every prompt (its kept vectors would answer a repeated one). <word> is new for every wrk
# run of this process, so no run repeats an earlier run's prompts.
DISTINCT_PROMPTS_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format('{{"model": "{model}", "messages": [{{"role": "user", "content": "{content}"}}], "max_tokens": 16}}', counter))
end
"""
NEW_TURN = "hello there {word} %d"
# A new multiple-choice question per request that the shipped router's word view settles (checked before measuring):
# the alias skips the embedding. "\\n" is a JSON newline escape inside the Lua string.
SETTLED_TURN = "Where would you most likely see a {word}?\\\\n\\\\nA. a park %d\\\\nB. a book\\\\nC. a cup\\\\nD. a shoe\\\\n\\\\nAnswer with the letter of the correct option only."
# One word piece each in MiniLM's vocabulary.
RUN_WORDS = ("apple", "river", "stone", "cloud", "forest", "garden", "window", "yellow", "silver", "orange", "summer", "winter",
             "market", "travel", "doctor", "letter", "planet", "ocean", "mountain", "island", "bridge", "castle", "engine", "flower")


def distinct_prompts_script(tmp: Path, name: str, model: str, key: str, word: str, turn: str = NEW_TURN) -> Path:
    """A wrk script whose user turns are new as long as ``word`` is (one wrk thread: the counter is per thread)."""
    script = tmp / f"post-{name}.lua"
    script.write_text(DISTINCT_PROMPTS_SCRIPT.format(key=key, model=model, content=turn.format(word=word)))
    return script


def learned_rows(wrk_bin: str, up_port: int, tmp: Path, seconds: int, rounds: int) -> dict[str, object]:
    """c1 latency of the plain model and of the learned alias (int8 and PyTorch embeddings) on one server, alternated."""
    config = tmp / "learned.yaml"
    subprocess.run([str(ROOT / ".venv" / "bin" / "modelyard"), *L6_TRAIN, "--out", str(tmp / "auto-l6.npz")], check=True, capture_output=True, env=ENV)
    config.write_text(LEARNED_CONFIG.format(port=up_port, l6_router=tmp / "auto-l6.npz", target=AUTO_QUALITY_TARGET))
    port = free_port()
    server = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / "data-learned"), "--log-level", "warning"],
                   tmp / "learned.log", f"http://127.0.0.1:{port}/readyz", env={"MODELYARD_MASTER_KEY": MASTER_KEY})
    url = f"http://127.0.0.1:{port}"
    try:
        key = tenant_key(url)
        # auto_no_words: the same new turns with lexical_first off, what words first costs a turn the words do not settle.
        # auto_l6: the same new turns through the former default, a router trained on, and served by, the whole int8 MiniLM.
        models = {"plain": "smollm2-135m", "auto": "auto", "auto_no_words": "auto-embedding-first", "auto_torch": "auto-torch", "auto_l6": "auto-l6"}
        fresh_rows = len(models) + 1  # and auto_words
        if fresh_rows * (rounds + 1) > len(RUN_WORDS):
            raise SystemExit(f"--rounds {rounds}: the learned rows have prompt words for {len(RUN_WORDS) // fresh_rows - 1} rounds at most")
        words = iter(random.sample(RUN_WORDS, len(RUN_WORDS)))  # a word per wrk run, none twice: new prompts every run
        def fresh(name: str, model: str, turn: str = NEW_TURN) -> Path:
            return distinct_prompts_script(tmp, f"learned-{name}", model, key, next(words), turn)

        scripts: dict[str, Callable[[], Path]] = {name: functools.partial(fresh, name, model) for name, model in models.items()}
        # New questions the word view settles: the alias routes without running the embedding model.
        scripts["auto_words"] = functools.partial(fresh, "auto_words", "auto", SETTLED_TURN)
        check_words(url, key, SETTLED_TURN, settled=True)
        check_words(url, key, NEW_TURN, settled=False)
        check_words(url, key, NEW_TURN, settled=False, alias="auto-l6")
        # An agent's tool loop: the same user turn on every request, so the alias routes on its kept vector.
        repeated = body_script(tmp, "learned-auto-repeated", "auto", key)
        scripts["auto_repeated"] = lambda: repeated
        # The same repeated turn with no kept vectors (embedding_cache: 0): what the runs before the cache measured.
        uncached = body_script(tmp, "learned-auto-uncached", "auto-uncached", key)
        scripts["auto_repeated_uncached"] = lambda: uncached
        served = httpx.post(url + "/v1/chat/completions", json=BODY | {"model": "auto"}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        served.raise_for_status()
        route = served.headers.get("x-modelyard-route", "")
        if "learned" not in route:
            raise RuntimeError(f"the auto alias did not route by the learned router: {route!r}")
        for script in scripts.values():
            wrk(wrk_bin, url, 1, 2, script())  # warm-up
        points: dict[str, list[dict[str, float]]] = {name: [] for name in scripts}
        for i in range(rounds):
            for name in scripts if i % 2 == 0 else list(scripts)[::-1]:
                points[name].append(wrk(wrk_bin, url, 1, seconds, scripts[name]()))
                print(f"  learned  round {i + 1}  {name:<10}  p50 {points[name][-1]['p50_ms']:7.2f} ms  p99 {points[name][-1]['p99_ms']:7.2f} ms", flush=True)
    finally:
        stop(server)
    out: dict[str, object] = {"route_header": route, "rounds": points}
    for name in scripts:
        out[f"{name}_p50_ms"] = median([p["p50_ms"] for p in points[name]])
        out[f"{name}_p99_ms"] = median([p["p99_ms"] for p in points[name]])
    return out


def check_words(url: str, key: str, turn: str, settled: bool, alias: str = "auto") -> None:
    """A row measures what it says only if the alias's router's word view settles its turns (``settled``) or does not."""
    content = turn.replace("\\\\n", "\n").format(word="bridge").replace("%d", "1")
    served = httpx.post(url + "/v1/chat/completions", json=BODY | {"model": alias, "messages": [{"role": "user", "content": content}]},
                        headers={"Authorization": f"Bearer {key}"}, timeout=30)
    served.raise_for_status()
    route = served.headers.get("x-modelyard-route", "")
    if (":words" in route) != settled or "learned" not in route:
        raise RuntimeError(f"{content!r} should {'' if settled else 'not '}be settled by the word view: {route!r}")


def redis_rows(wrk_bin: str, up_port: int, tmp: Path, seconds: int) -> dict[str, object] | None:
    """The production path with rate limits and budgets shared through Redis (--redis-url), at c1 and c50."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # no Redis on this machine: the row is left out, and says why
        print(f"  redis: not reachable at {REDIS_URL} ({exc}); row left out", flush=True)
        return None
    config = tmp / "redis.yaml"
    config.write_text(MODELYARD_CONFIG.format(port=up_port))
    port = free_port()
    server = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / "data-redis"), "--log-level", "warning", "--redis-url", REDIS_URL],
                   tmp / "redis.log", f"http://127.0.0.1:{port}/readyz", env={"MODELYARD_MASTER_KEY": MASTER_KEY})
    url = f"http://127.0.0.1:{port}"
    try:
        script = body_script(tmp, "redis", "fake", tenant_key(url))
        wrk(wrk_bin, url, 10, 2, script)
        out: dict[str, object] = {}
        for concurrency in (1, 50):
            assert server.pid is not None
            before = cpu_seconds(server.pid)
            point = wrk(wrk_bin, url, concurrency, seconds, script)
            point["cpu_ms_per_request"] = (cpu_seconds(server.pid) - before) * 1000 / max(1.0, point["rps"] * seconds)
            out[f"c{concurrency}"] = point
            print(f"  redis  c{concurrency:<3}  {point['rps']:8.1f} req/s  p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms  errors {point['errors']:.0f}", flush=True)
    finally:
        stop(server)
    return out


def start_modelyard(template: str, up_port: int, tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    """``modelyard serve`` on ``template``'s fleet in front of the upstream, with API keys on; the process and its URL."""
    config = tmp / f"{name}.yaml"
    config.write_text(template.format(port=up_port))
    port = free_port()
    process = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / f"data-{name}"), "--log-level", "warning"],
                    tmp / f"{name}.log", f"http://127.0.0.1:{port}/readyz", env={"MODELYARD_MASTER_KEY": MASTER_KEY})
    return process, f"http://127.0.0.1:{port}"


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    wrk_bin = ensure_wrk()
    litellm_bin = ensure_litellm()
    results: dict[str, object] = {"config": {"seconds_per_point": args.seconds, "soak_s": args.soak_s, "litellm": LITELLM_VERSION}, "machine": machine()}
    for latency in (50, 0):
        up_port = free_port()
        upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", str(latency), "--tokens", "16"], tmp / f"up{latency}.log", f"http://127.0.0.1:{up_port}/v1/models")
        gateway, my_url = start_modelyard(MODELYARD_CONFIG, up_port, tmp, f"my{latency}")
        whole, whole_url = start_modelyard(WHOLE_CONFIG, up_port, tmp, f"whole{latency}")
        lite, lite_url = start_litellm(litellm_bin, up_port, tmp)
        floor, floor_url = start_floor(up_port, tmp)
        targets = {"direct": f"http://127.0.0.1:{up_port}", "floor": floor_url, "modelyard": my_url, "modelyard_whole": whole_url, "litellm": lite_url}
        keys = {"direct": "unused", "floor": "unused", "modelyard": tenant_key(targets["modelyard"]),
                "modelyard_whole": tenant_key(targets["modelyard_whole"]), "litellm": MASTER_KEY}
        measured_pids = {"modelyard": gateway.pid, "modelyard_whole": whole.pid, "floor": floor.pid}
        scripts = {}
        for name, key in keys.items():
            scripts[name] = tmp / f"post-{name}.lua"
            scripts[name].write_text(WRK_SCRIPT.format(body=json.dumps(BODY), key=key))
        try:
            for name, url in targets.items():
                wrk(wrk_bin, url, 10, 2, scripts[name])  # warm-up
            for concurrency in (1, 50, 200):
                rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
                for round_no in range(args.point_rounds):  # the systems alternate within each round: drift hits all of them alike
                    for name, url in targets.items():
                        pid = measured_pids.get(name)
                        cpu_before = cpu_seconds(pid) if pid else 0.0
                        point = wrk(wrk_bin, url, concurrency, args.seconds, scripts[name])
                        if pid:
                            # The proxy's own CPU per request: tells work apart from waiting.
                            point["cpu_ms_per_request"] = (cpu_seconds(pid) - cpu_before) * 1000 / max(1.0, point["rps"] * args.seconds)
                        rounds[name].append(point)
                        print(f"  upstream {latency} ms  c{concurrency:<3}  {name:<15}  round {round_no + 1}  {point['rps']:8.1f} req/s  "
                              f"p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms  errors {point['errors']:.0f}", flush=True)
                for name, points in rounds.items():
                    results[f"{name}_lat{latency}_c{concurrency}"] = median_point(points)
            if latency == 50:
                for name, url in targets.items():
                    results[f"{name}_stream"] = asyncio.run(stream_timing(url, {"Authorization": f"Bearer {keys[name]}"}, 30))
                assert gateway.pid is not None
                results["soak"] = asyncio.run(soak(targets["modelyard"], gateway.pid, args.soak_rate, args.soak_s, keys["modelyard"]))
                stop(lite)  # the feature rows run alone with the upstream
                stop(floor)
                stop(gateway)
                stop(whole)
                results["learned"] = learned_rows(wrk_bin, up_port, tmp, args.seconds, args.rounds)
                results["redis"] = redis_rows(wrk_bin, up_port, tmp, args.seconds)
        finally:
            for process in (lite, floor, gateway, whole, upstream):
                stop(process)
    return results


def median_point(points: list[dict[str, float]]) -> dict[str, object]:
    """Each field's median over the rounds, its range, and the rounds themselves."""
    out: dict[str, object] = {}
    for field in points[0]:
        values = [p[field] for p in points]
        out[field] = statistics.median(values)
        if len(points) > 1:
            out[f"{field}_range"] = [min(values), max(values)]
    out["rounds"] = points
    return out


def round_ratios(r: dict[str, object]) -> dict[str, object]:
    """Ratios computed within each round (the two systems measured minutes apart, not a run apart): median and range."""
    def per_round(key: str, field: str) -> list[float]:
        return [float(p[field]) for p in r[key]["rounds"]]  # type: ignore[index]

    pairs = {
        "cpu_ratio_modelyard_vs_floor_c50": ("modelyard_lat50_c50", "floor_lat50_c50", "cpu_ms_per_request"),
        "cpu_ratio_modelyard_whole_vs_floor_c50": ("modelyard_whole_lat50_c50", "floor_lat50_c50", "cpu_ms_per_request"),
        "ratio_modelyard_vs_floor_c50": ("modelyard_lat50_c50", "floor_lat50_c50", "rps"),
        "ratio_modelyard_whole_vs_floor_c50": ("modelyard_whole_lat50_c50", "floor_lat50_c50", "rps"),
        "ratio_modelyard_vs_litellm_c50": ("modelyard_lat50_c50", "litellm_lat50_c50", "rps"),
    }
    out: dict[str, object] = {}
    for name, (top, bottom, field) in pairs.items():
        if "rounds" not in r[top]:  # type: ignore[operator]
            continue
        ratios = [a / b for a, b in zip(per_round(top, field), per_round(bottom, field), strict=True) if b]
        out[f"{name}_per_round"] = {"median": round(statistics.median(ratios), 3), "range": [round(min(ratios), 3), round(max(ratios), 3)]}
    for system in ("modelyard", "modelyard_whole"):
        if "rounds" in r[f"{system}_lat50_c1"]:  # type: ignore[operator]
            added = [a - b for a, b in zip(per_round(f"{system}_lat50_c1", "p50_ms"), per_round("floor_lat50_c1", "p50_ms"), strict=True)]
            out[f"{system}_added_over_floor_p50_ms_c1_per_round"] = {"median": round(statistics.median(added), 3), "range": [round(min(added), 3), round(max(added), 3)]}
    return out


def summarise(r: dict[str, object]) -> dict[str, object]:
    def get(key: str, field: str) -> float:
        return float(r[key][field])  # type: ignore[index]

    out: dict[str, object] = {
        "direct_rps_c50": get("direct_lat50_c50", "rps"),
        "modelyard_rps_c50": get("modelyard_lat50_c50", "rps"),
        "litellm_rps_c50": get("litellm_lat50_c50", "rps"),
        "modelyard_added_p50_ms_c1": round(get("modelyard_lat50_c1", "p50_ms") - get("direct_lat50_c1", "p50_ms"), 3),
        "modelyard_added_p99_ms_c1": round(get("modelyard_lat50_c1", "p99_ms") - get("direct_lat50_c1", "p99_ms"), 3),
        "litellm_added_p50_ms_c1": round(get("litellm_lat50_c1", "p50_ms") - get("direct_lat50_c1", "p50_ms"), 3),
        "litellm_added_p99_ms_c1": round(get("litellm_lat50_c1", "p99_ms") - get("direct_lat50_c1", "p99_ms"), 3),
        "modelyard_rss_growth_pct": r["soak"]["rss_growth_pct"],  # type: ignore[index]
        "modelyard_cpu_ms_per_request_c1": round(get("modelyard_lat50_c1", "cpu_ms_per_request"), 3),
        "modelyard_cpu_ms_per_request_c1_upstream0": round(get("modelyard_lat0_c1", "cpu_ms_per_request"), 3),
        "floor_rps_c50": get("floor_lat50_c50", "rps"),
        "floor_added_p50_ms_c1": round(get("floor_lat50_c1", "p50_ms") - get("direct_lat50_c1", "p50_ms"), 3),
        "floor_added_p99_ms_c1": round(get("floor_lat50_c1", "p99_ms") - get("direct_lat50_c1", "p99_ms"), 3),
        "floor_cpu_ms_per_request_c1": round(get("floor_lat50_c1", "cpu_ms_per_request"), 3),
        "floor_cpu_ms_per_request_c1_upstream0": round(get("floor_lat0_c1", "cpu_ms_per_request"), 3),
    }
    for name in ("floor", "modelyard"):
        out[f"{name}_cpu_ms_per_request_c50"] = round(get(f"{name}_lat50_c50", "cpu_ms_per_request"), 3)
        out[f"{name}_cpu_ms_per_request_c50_upstream0"] = round(get(f"{name}_lat0_c50", "cpu_ms_per_request"), 3)
    out["cpu_ratio_modelyard_vs_floor_c50"] = round(out["modelyard_cpu_ms_per_request_c50"] / out["floor_cpu_ms_per_request_c50"], 3)  # type: ignore[operator]
    out["cpu_ratio_modelyard_vs_floor_c50_upstream0"] = round(
        out["modelyard_cpu_ms_per_request_c50_upstream0"] / out["floor_cpu_ms_per_request_c50_upstream0"], 3  # type: ignore[operator]
    )
    # The same production path fetching non-streamed answers whole (upstream_streaming: when_client_streams).
    out["modelyard_whole_rps_c50"] = get("modelyard_whole_lat50_c50", "rps")
    out["modelyard_whole_added_p50_ms_c1"] = round(get("modelyard_whole_lat50_c1", "p50_ms") - get("direct_lat50_c1", "p50_ms"), 3)
    out["modelyard_whole_added_p99_ms_c1"] = round(get("modelyard_whole_lat50_c1", "p99_ms") - get("direct_lat50_c1", "p99_ms"), 3)
    out["modelyard_whole_cpu_ms_per_request_c50"] = round(get("modelyard_whole_lat50_c50", "cpu_ms_per_request"), 3)
    out["modelyard_whole_cpu_ms_per_request_c50_upstream0"] = round(get("modelyard_whole_lat0_c50", "cpu_ms_per_request"), 3)
    out["cpu_ratio_modelyard_whole_vs_floor_c50"] = round(out["modelyard_whole_cpu_ms_per_request_c50"] / out["floor_cpu_ms_per_request_c50"], 3)  # type: ignore[operator]
    out["ratio_modelyard_whole_vs_floor_c50"] = round(out["modelyard_whole_rps_c50"] / out["floor_rps_c50"], 3)  # type: ignore[operator]
    out["ratio_modelyard_whole_vs_litellm_c50"] = round(out["modelyard_whole_rps_c50"] / out["litellm_rps_c50"], 2)  # type: ignore[operator]
    out["features_whole_added_p50_ms_c1"] = round(out["modelyard_whole_added_p50_ms_c1"] - out["floor_added_p50_ms_c1"], 3)  # type: ignore[operator]
    learned = r["learned"]
    out["learned_added_p50_ms_c1"] = round(learned["auto_p50_ms"] - learned["plain_p50_ms"], 3)  # type: ignore[index]
    out["learned_torch_added_p50_ms_c1"] = round(learned["auto_torch_p50_ms"] - learned["plain_p50_ms"], 3)  # type: ignore[index]
    out["learned_settled_added_p50_ms_c1"] = round(learned["auto_words_p50_ms"] - learned["plain_p50_ms"], 3)  # type: ignore[index]
    out["learned_embedding_first_added_p50_ms_c1"] = round(learned["auto_no_words_p50_ms"] - learned["plain_p50_ms"], 3)  # type: ignore[index]
    if "auto_repeated_p50_ms" in learned:  # type: ignore[operator]
        out["learned_repeated_added_p50_ms_c1"] = round(learned["auto_repeated_p50_ms"] - learned["plain_p50_ms"], 3)  # type: ignore[index]
        out["learned_repeated_uncached_added_p50_ms_c1"] = round(learned["auto_repeated_uncached_p50_ms"] - learned["plain_p50_ms"], 3)  # type: ignore[index]
    redis_row = r.get("redis")
    if redis_row:
        out["redis_rps_c50"] = redis_row["c50"]["rps"]  # type: ignore[index]
        out["redis_cpu_ms_per_request_c50"] = round(redis_row["c50"]["cpu_ms_per_request"], 3)  # type: ignore[index]
        out["redis_added_p50_ms_c1"] = round(redis_row["c1"]["p50_ms"] - get("direct_lat50_c1", "p50_ms"), 3)  # type: ignore[index]
    # What modelyard's features cost above any Python gateway's floor, in the same run.
    out["features_added_p50_ms_c1"] = round(out["modelyard_added_p50_ms_c1"] - out["floor_added_p50_ms_c1"], 3)  # type: ignore[operator]
    out["features_cpu_ms_per_request_c1_upstream0"] = round(out["modelyard_cpu_ms_per_request_c1_upstream0"] - out["floor_cpu_ms_per_request_c1_upstream0"], 3)  # type: ignore[operator]
    out["ratio_modelyard_vs_floor_c50"] = round(out["modelyard_rps_c50"] / out["floor_rps_c50"], 3)  # type: ignore[operator]
    out["ratio_modelyard_vs_floor_c50_upstream0"] = round(get("modelyard_lat0_c50", "rps") / get("floor_lat0_c50", "rps"), 3)
    out["ratio_modelyard_vs_litellm_c50"] = round(out["modelyard_rps_c50"] / out["litellm_rps_c50"], 2)  # type: ignore[operator]
    out["ratio_modelyard_vs_direct_c50"] = round(out["modelyard_rps_c50"] / out["direct_rps_c50"], 3)  # type: ignore[operator]
    out.update(round_ratios(r))

    def judged(name: str, per_round: str | None = None) -> float:
        """The figure a goal is judged on: its per-round median when the run had rounds, else the single figure."""
        rounds = out.get(per_round or f"{name}_per_round")
        return float(rounds["median"]) if isinstance(rounds, dict) else float(out[name])  # type: ignore[arg-type]

    out["goals"] = {
        "throughput_ge_10x_litellm": out["ratio_modelyard_vs_litellm_c50"] >= 10,  # type: ignore[operator]
        "throughput_ge_50pct_direct": out["ratio_modelyard_vs_direct_c50"] >= 0.5,  # type: ignore[operator]
        "added_p50_le_1ms": out["modelyard_added_p50_ms_c1"] <= 1.0,  # type: ignore[operator]
        "added_p99_le_5ms": out["modelyard_added_p99_ms_c1"] <= 5.0,  # type: ignore[operator]
        "rss_growth_le_10pct": out["modelyard_rss_growth_pct"] <= 10,  # type: ignore[operator]
        "fds_flat": r["soak"]["fd_last"] <= r["soak"]["fd_first"] + 5,  # type: ignore[index]
        # Issue 18's goals, each against a reference measured in the same run.
        "cpu_c50_le_1_5x_floor": judged("cpu_ratio_modelyard_vs_floor_c50") <= 1.5,
        "added_p50_le_floor_plus_0_5ms": judged("features_added_p50_ms_c1", "modelyard_added_over_floor_p50_ms_c1_per_round") <= 0.5,
        "learned_added_p50_le_3ms": out["learned_added_p50_ms_c1"] <= 3.0,  # type: ignore[operator]
        "throughput_ge_5x_litellm": judged("ratio_modelyard_vs_litellm_c50") >= 5,
        "throughput_ge_90pct_floor": judged("ratio_modelyard_vs_floor_c50") >= 0.9,
        "whole_cpu_c50_le_1_5x_floor": judged("cpu_ratio_modelyard_whole_vs_floor_c50") <= 1.5,
        "whole_added_p50_le_floor_plus_0_5ms": judged("features_whole_added_p50_ms_c1", "modelyard_whole_added_over_floor_p50_ms_c1_per_round") <= 0.5,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per point and a 20 s soak (about a minute of load)")
    parser.add_argument("--tracing", action="store_true", help="only compare modelyard with OpenTelemetry traces off and on (bench/gateway_tracing.py)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the learned-alias rows and of --tracing (default 3)")
    parser.add_argument("--learned-only", action="store_true",
                        help="only the learned-alias rows on the 50 ms upstream (writes bench/results/gateway_learned.json)")
    parser.add_argument("--point-rounds", type=int, default=3,
                        help="rounds of the main table, the systems alternated in each; every figure is the median, with its range (default 3, --quick 1)")
    args = parser.parse_args()
    if args.tracing:
        import gateway_tracing

        seconds = 3 if args.quick else 10
        with tempfile.TemporaryDirectory() as tmp:
            raw = gateway_tracing.run_tracing(sys.modules[__name__], args.rounds, seconds, Path(tmp))
        gateway_tracing.report(raw, args.rounds, seconds)
        return
    args.seconds, args.soak_s, args.soak_rate = (3, 20.0, 100.0) if args.quick else (10, 300.0, 200.0)
    if args.learned_only:
        learned_only(args)
        return
    if args.quick:
        args.point_rounds = 1
    with tempfile.TemporaryDirectory() as tmp:
        raw = run(args, Path(tmp))
    summary = summarise(raw)
    rows = [("upstream", "concurrency", "system", "req/s", "p50 ms", "p99 ms", "errors", "CPU ms/request (range)")]
    for latency in (50, 0):
        for c in (1, 50, 200):
            for name in ("direct", "floor", "modelyard", "modelyard_whole", "litellm"):
                p: Any = raw[f"{name}_lat{latency}_c{c}"]
                cpu = f"{p['cpu_ms_per_request']:.3f} ({p['cpu_ms_per_request_range'][0]:.3f}-{p['cpu_ms_per_request_range'][1]:.3f})" \
                    if "cpu_ms_per_request_range" in p else (f"{p['cpu_ms_per_request']:.3f}" if "cpu_ms_per_request" in p else "")
                rows.append((f"{latency} ms", str(c), name, f"{p['rps']:.1f}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}", f"{p['errors']:.0f}", cpu))
    learned = raw["learned"]
    for name in ("plain", "auto", "auto_l6", "auto_torch", "auto_repeated", "auto_repeated_uncached"):
        if f"{name}_p50_ms" not in learned:  # type: ignore[operator]
            continue
        rows.append(("50 ms", "1", f"learned:{name}", "", f"{learned[f'{name}_p50_ms']:.2f}", f"{learned[f'{name}_p99_ms']:.2f}", "", ""))  # type: ignore[index]
    if raw.get("redis"):
        for c in (1, 50):
            p = raw["redis"][f"c{c}"]  # type: ignore[index]
            rows.append(("50 ms", str(c), "modelyard+redis", f"{p['rps']:.1f}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}", f"{p['errors']:.0f}", ""))
    print(table(rows))
    print()
    print(table([("metric", "value")] + [(k, str(v)) for k, v in summary.items()]))
    path = write_result("gateway", summary | {"raw": raw})
    print(f"wrote {path}")


def learned_only(args: argparse.Namespace) -> None:
    """The learned-alias rows alone (the main run's "learned" section), against the 50 ms upstream."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        wrk_bin = ensure_wrk()
        up_port = free_port()
        upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", "50", "--tokens", "16"], tmp / "up.log",
                         f"http://127.0.0.1:{up_port}/v1/models")
        try:
            learned = learned_rows(wrk_bin, up_port, tmp, args.seconds, args.rounds)
        finally:
            stop(upstream)
    names = ("auto", "auto_no_words", "auto_words", "auto_l6", "auto_torch", "auto_repeated", "auto_repeated_uncached")
    out = {name: round(learned[f"{name}_p50_ms"] - learned["plain_p50_ms"], 3) for name in names}  # type: ignore[operator]
    rows = [("model", "p50 ms", "p99 ms", "added p50 ms over the plain model")]
    for name in ("plain", *names):
        rows.append((name, f"{learned[f'{name}_p50_ms']:.2f}", f"{learned[f'{name}_p99_ms']:.2f}", f"{out[name]:+.2f}" if name in out else ""))  # type: ignore[index]
    print(table(rows))
    summary = {"config": {"seconds_per_point": args.seconds, "rounds": args.rounds}, "machine": machine(),
               "learned_added_p50_ms_c1": out["auto"], "learned_settled_added_p50_ms_c1": out["auto_words"],
               "learned_embedding_first_added_p50_ms_c1": out["auto_no_words"], "learned_torch_added_p50_ms_c1": out["auto_torch"],
               "learned_repeated_added_p50_ms_c1": out["auto_repeated"], "learned_repeated_uncached_added_p50_ms_c1": out["auto_repeated_uncached"],
               "learned_6_layers_added_p50_ms_c1": out["auto_l6"], "learned": learned}
    print(f"wrote {write_result('gateway_learned', summary)}")


if __name__ == "__main__":
    main()
