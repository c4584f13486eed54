"""The local engine: llama.cpp's own server behind modelyard vs the old worker pool vs the server alone.

    .venv/bin/python bench/engine.py [--models smollm2-135m,qwen2.5-0.5b] [--quick]

For each model, on the same machine in one run, with the same total threads:

  old      modelyard serving ``backend: llamacpp``: a pool of one-request worker
           processes (2 workers x 1 thread: today's way to serve 2 at once on 2 cores)
  new      modelyard serving ``backend: llamacpp_server``: one llama.cpp server,
           ``--parallel`` slots, continuous batching, 2 threads
  ceiling  the same llama.cpp server (modelyard's launcher) called directly, no gateway
  shared   ``new`` with llama.cpp's unified KV cache, beside a ``new`` run with
           ``--kv-cache per_slot`` (one KV stream per slot)
  peer     llama-cpp-python's bundled server (serializes requests), when installed

Closed-loop streaming clients at concurrency 1, 2, 4, 8, 16 send chat prompts
of mixed length (about 40, 160 and 500 tokens) asking for 64-128 new tokens
(temperature 0.7, a seed per request); each client sends ``--rounds``
requests (at least 6 per level). Reported per level: aggregate generated
tokens/s (usage tokens over the level's wall time), TTFT and TPOT p50/p99.

Then, on ``new`` only:
  interactive  ``--interactive`` short interactive requests one after another,
               alone and while ``parallel - 1`` batch-class clients keep the
               engine full (TTFT p50/p99 each);
  turn 2       TTFT of the second turn of a conversation with a ~1,500-token
               history, with prefix reuse and with ``cache_prompt: false``
               (median of ``--turns`` conversations, each with its own history).

RSS is the whole process tree of the server (gateway + engines), sampled
every 0.5 s, maximum over the c1 and the c16 level. Repeats (``--repeats``)
re-run the concurrency sweep; medians and min-max are reported.

Writes bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ENV, RESULTS, ROOT, commit, free_port, machine, percentile, start, stop, table, write_result  # noqa: E402

MODELS = {"smollm2-135m": "builtin:smollm2-135m", "qwen2.5-0.5b": "builtin:qwen2.5-coder-0.5b"}
LEVELS = (1, 2, 4, 8, 16)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "the", "gateway", "routes", "requests", "across", "a", "fleet", "of", "local", "and", "hosted", "models", "and", "every", "answer", "is", "accounted", "per", "tenant", "so", "that", "the", "margins", "hold", "at", "ten", "times", "the", "traffic"]
PROMPT_WORDS = (30, 120, 380)
# llama.cpp's HTTP server closes idle kept-alive connections, and a request sent
# into one as it closes fails; every system is measured with fresh connections.
FRESH = httpx.Limits(max_connections=64, max_keepalive_connections=0)


def prompt(i: int) -> str:
    n = PROMPT_WORDS[i % len(PROMPT_WORDS)]
    text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(n))
    return f"Request {i}. Read this and then write a long story about it: {text}"


@dataclass
class Level:
    tokens: int = 0
    wall_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    errors: int = 0
    rss_mb: float = 0.0

    def summary(self) -> dict[str, Any]:
        ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
        return {
            "tok_s": round(self.tokens / self.wall_s, 2) if self.wall_s else None, "tokens": self.tokens, "wall_s": round(self.wall_s, 2),
            "ttft_p50_ms": ms(percentile(self.ttft, 50)), "ttft_p99_ms": ms(percentile(self.ttft, 99)),
            "tpot_p50_ms": ms(percentile(self.tpot, 50)), "tpot_p99_ms": ms(percentile(self.tpot, 99)),
            "requests": len(self.ttft), "errors": self.errors, "rss_mb": round(self.rss_mb, 1),
        }


async def stream_once(http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                      on_content: Callable[[], None] | None = None) -> tuple[float, float, int] | None:
    """(ttft s, total s, completion tokens) of one streamed chat request; None on an error. ``on_content`` is
    called for every event that carries text (about one token each)."""
    t0 = time.monotonic()
    first = None
    tokens = 0
    async with http.stream("POST", url, json=body | {"stream": True, "stream_options": {"include_usage": True}}, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return None
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                if first is None:
                    first = time.monotonic() - t0
                if on_content is not None:
                    on_content()
            if event.get("usage"):
                tokens = int(event["usage"].get("completion_tokens") or 0)
    if first is None:
        return None
    return first, time.monotonic() - t0, tokens


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            total += int(next(line.split()[1] for line in Path(f"/proc/{p}/status").read_text().splitlines() if line.startswith("VmRSS")))
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, StopIteration):
            continue
    return total / 1024


async def sample_rss(pid: int, level: Level, stop_event: asyncio.Event) -> None:
    while not stop_event.is_set():
        level.rss_mb = max(level.rss_mb, tree_rss_mb(pid))
        try:
            await asyncio.wait_for(stop_event.wait(), 0.5)
        except TimeoutError:
            pass


async def run_level(url: str, model: str, concurrency: int, rounds: int, seed: int, pid: int | None, headers: dict[str, str] | None = None,
                    ignore_eos: bool = False) -> Level:
    level = Level()
    total = max(6, concurrency * rounds)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(seed * 1000 + i)
    rng = random.Random(seed)
    max_tokens = {seed * 1000 + i: rng.randint(64, 128) for i in range(total)}

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": model, "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": max_tokens[i], "temperature": 0.7, "seed": i}
            if ignore_eos:
                body["ignore_eos"] = True  # the same tokens on every system: generation runs to max_tokens
            result = await stream_once(http, url, body, headers=headers)
            if result is None:
                level.errors += 1
                continue
            ttft, total_s, tokens = result
            level.tokens += tokens
            level.ttft.append(ttft)
            if tokens > 1:
                level.tpot.append((total_s - ttft) / (tokens - 1))

    done = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, level, done)) if pid else None
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=600, limits=FRESH) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    level.wall_s = time.monotonic() - t0
    done.set()
    if sampler:
        await sampler
    return level


# -- the systems -------------------------------------------------------------------------------

def gateway_config(model: str, deployment: str) -> str:
    """``deployment`` is one flow mapping, or several separated by newlines (the 2x1 layout)."""
    lines = "".join(f"      - {d}\n" for d in deployment.splitlines())
    return (
        "scheduling:\n  ttft_objective_s: {interactive: 600, agent: 600}\n  reserved_slots: 1\n"
        f"models:\n  {model}:\n    kind: chat\n    strategy: least_load\n    deployments:\n{lines}"
    )


def old_deployment(builtin: str) -> str:
    return f"{{backend: llamacpp, model_file: '{builtin}', workers: 2, threads: 1, n_ctx: 2048, max_queue: 512}}"


# One-token steps on one thread where that measured faster (docs/configuration.md, decode_threads).
DECODE_THREADS = {"builtin:smollm2-135m": 1, "builtin:qwen2.5-coder-0.5b": 2}


def new_deployment(builtin: str, parallel: int, cache_prompt: bool = True, layout: str = "1x2", cache_ram_mib: int | None = None,
                   kv_cache: str = "shared") -> str:
    """One engine with 2 threads; (``2x1``) two engines with 1 thread and half the slots each; (``split``) two
    engines with 1 thread each, one reserved for interactive and agent work (2 slots), one for batch and
    background work (``parallel - 1`` slots); (``split-nice``) the same with the batch engine at nice 10."""
    if layout in ("split", "split-nice"):
        common = f"backend: llamacpp_server, model_file: '{builtin}', threads: 1, n_ctx: 2048, max_queue: 512, cache_prompt: {str(cache_prompt).lower()}, kv_cache: {kv_cache}"
        nice = 10 if layout == "split-nice" else 0
        return (f"{{name: live, classes: [interactive, agent], parallel: 2, {common}}}\n"
                f"{{name: bulk, classes: [batch, background], parallel: {max(1, parallel - 1)}, nice: {nice}, {common}}}")
    if layout == "2x1":
        return "\n".join(
            f"{{name: e{i}, backend: llamacpp_server, model_file: '{builtin}', parallel: {max(1, parallel // 2)}, threads: 1, "
            f"n_ctx: 2048, max_queue: 512, cache_prompt: {str(cache_prompt).lower()}, kv_cache: {kv_cache}}}"
            for i in range(2)
        )
    return (
        f"{{backend: llamacpp_server, model_file: '{builtin}', parallel: {parallel}, threads: 2, decode_threads: {DECODE_THREADS[builtin]}, "
        f"n_ctx: 2048, max_queue: 512, cache_prompt: {str(cache_prompt).lower()}, kv_cache: {kv_cache}"
        + ("" if cache_ram_mib is None else f", cache_ram_mib: {cache_ram_mib}") + "}"
    )


class Gateway:
    def __init__(self, tmp: Path, label: str, model: str, deployment: str) -> None:
        config = tmp / f"{label}.yaml"
        config.write_text(gateway_config(model, deployment))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        args = ["serve", "--config", str(config), "--port", str(port), "--log-level", "warning", "--data-dir", str(tmp / label)]
        self.process = start(args, tmp / f"{label}.log", f"http://127.0.0.1:{port}/readyz", timeout=300)

    def close(self) -> None:
        stop(self.process)


class DirectEngine:
    """modelyard's launcher run by hand: llama.cpp's server with nothing in front."""

    def __init__(self, model_file: Path, parallel: int, decode_threads: int, kv_cache: str = "shared") -> None:
        argv = [sys.executable, "-m", "modelyard.backends.llama_server_launcher", "--model-file", str(model_file),
                "--parallel", str(parallel), "--n-ctx", "2048", "--threads", "2", "--decode-threads", str(decode_threads), "--n-batch", "64", "--verbosity", "0"]
        argv += ["--kv-split"] if kv_cache == "per_slot" else []
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV | {"OMP_NUM_THREADS": "2"}, cwd=ROOT)
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline())
        if ready.get("ev") != "ready":
            raise RuntimeError(f"engine did not start: {ready}")
        self.url = ready["base_url"] + "/v1/chat/completions"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


class PeerServer:
    """llama-cpp-python's bundled server, when its [server] extra is installed."""

    def __init__(self, tmp: Path, model_file: Path) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_file), "--n_threads", "2", "--n_ctx", "4096", "--port", str(port)]
        self.process = subprocess.Popen(argv, stdout=(tmp / "peer.log").open("wb"), stderr=subprocess.STDOUT, env=ENV)
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("llama-cpp-python's server did not start")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def peer_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings"))


def old_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


# -- the measurements ----------------------------------------------------------------------------

async def sweep(url: str, model: str, levels: tuple[int, ...], rounds: int, seed: int, pid: int | None,
                headers: dict[str, str] | None = None, ignore_eos: bool = False) -> dict[int, Level]:
    out = {}
    for c in levels:
        out[c] = await run_level(url, model, c, rounds, seed + c, pid, headers, ignore_eos)
        print(f"    c{c}: {out[c].summary()['tok_s']} tok/s, ttft p50 {out[c].summary()['ttft_p50_ms']} ms", flush=True)
    return out


@dataclass
class InteractiveRun:
    ttfts: list[float]
    batch_tokens: int  # batch-class tokens streamed while the interactive requests ran
    wall_s: float

    @property
    def batch_tok_s(self) -> float:
        return round(self.batch_tokens / self.wall_s, 2) if self.wall_s else 0.0


async def interactive_ttft(url: str, model: str, count: int, batch_clients: int) -> InteractiveRun:
    """TTFTs of ``count`` short interactive requests, one after another, beside ``batch_clients`` looping batch requests."""
    stop_batch = asyncio.Event()
    ttfts: list[float] = []
    measuring = False
    batch_tokens = 0

    def count_batch_token() -> None:
        nonlocal batch_tokens
        if measuring:
            batch_tokens += 1

    async def batch_loop(http: httpx.AsyncClient, k: int) -> None:
        i = 0
        while not stop_batch.is_set():
            body = {"model": model, "messages": [{"role": "user", "content": prompt(50_000 + k * 1000 + i)}], "max_tokens": 128, "temperature": 0.7}
            await stream_once(http, url, body, headers={"x-modelyard-class": "batch"}, on_content=count_batch_token)
            i += 1

    async with httpx.AsyncClient(timeout=600, limits=FRESH) as http:
        batch = [asyncio.create_task(batch_loop(http, k)) for k in range(batch_clients)]
        if batch_clients:
            await asyncio.sleep(3.0)  # let the batch fill the engine before measuring
        measuring, t0 = True, time.monotonic()
        for i in range(count):
            body = {"model": model, "messages": [{"role": "user", "content": f"Question {i}: name a colour."}], "max_tokens": 4, "temperature": 0}
            result = await stream_once(http, url, body, headers={"x-modelyard-class": "interactive"})
            if result is not None:
                ttfts.append(result[0])
        wall = time.monotonic() - t0
        measuring = False
        stop_batch.set()
        await asyncio.gather(*batch, return_exceptions=True)
    return InteractiveRun(ttfts, batch_tokens, wall)


async def turn_two_ttft(url: str, model: str, conversations: int, seed: int) -> list[float]:
    """TTFT of turn 2 for conversations with a ~1,500-token first turn, each with its own history."""
    out = []
    async with httpx.AsyncClient(timeout=600, limits=FRESH) as http:
        for c in range(conversations):
            history = " ".join(WORDS[(seed + c * 13 + k * 5) % len(WORDS)] for k in range(1150))
            turn1 = [{"role": "system", "content": f"Conversation {seed}-{c}."}, {"role": "user", "content": f"Remember this text: {history}"}]
            first = await http.post(url, json={"model": model, "messages": turn1, "max_tokens": 16, "temperature": 0})
            answer = first.json()["choices"][0]["message"]["content"]
            turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Which word came first?"}]
            result = await stream_once(http, url, {"model": model, "messages": turn2, "max_tokens": 4, "temperature": 0})
            if result is not None:
                out.append(result[0])
    return out


def stats(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2), "runs": [round(v, 2) for v in values]}


async def measure_model(model: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from modelyard.fleet import artifacts

    builtin = MODELS[model]
    model_file = artifacts.resolve(builtin, Path("~/.cache/modelyard/models").expanduser())
    sweeps: dict[str, list[dict[int, Level]]] = {"old": [], "new": [], "ceiling": [], "shared": []}
    for repeat in range(args.repeats):
        for system in args.systems:
            if system == "old" and not old_available():
                continue
            print(f"  {model} repeat {repeat + 1}: {system}", flush=True)
            if system == "ceiling":
                direct = DirectEngine(model_file, args.parallel, DECODE_THREADS[builtin], args.kv_cache)
                try:
                    sweeps[system].append(await sweep(direct.url, model, args.levels, args.rounds, repeat * 100, direct.process.pid, ignore_eos=args.ignore_eos))
                finally:
                    direct.close()
                continue
            # "shared": the new backend with llama.cpp's unified KV cache, beside a --kv-cache per_slot "new".
            kv_cache = "shared" if system == "shared" else args.kv_cache
            deployment = old_deployment(builtin) if system == "old" else new_deployment(builtin, args.parallel, layout=args.layout, kv_cache=kv_cache)
            gateway = Gateway(tmp, f"{model}-{system}-{repeat}", model, deployment)
            try:
                headers = {"x-modelyard-class": args.request_class} if args.request_class else None
                sweeps[system].append(await sweep(gateway.url, model, args.levels, args.rounds, repeat * 100, gateway.process.pid, headers, args.ignore_eos))
            finally:
                gateway.close()

    peer = None
    if args.no_extras:
        return summarize(sweeps, None, [], [], [], [])
    if peer_available() and 8 in args.levels:
        print(f"  {model}: peer (llama-cpp-python server) at c8", flush=True)
        server = PeerServer(tmp, model_file)
        try:
            peer = (await run_level(server.url, model, 8, args.rounds, 7, server.process.pid)).summary()
        finally:
            server.close()

    layouts = {}
    for layout in args.interactive_layouts:
        print(f"  {model}: interactive TTFT alone and beside a batch job ({args.interactive} requests each), layout {layout}", flush=True)
        gateway = Gateway(tmp, f"{model}-interactive-{layout}", model, new_deployment(builtin, args.parallel, layout=layout, cache_ram_mib=args.cache_ram_mib, kv_cache=args.kv_cache))
        try:
            alone = await interactive_ttft(gateway.url, model, args.interactive, 0)
            beside = await interactive_ttft(gateway.url, model, args.interactive, args.parallel - 1)
            batch_only = await batch_throughput(gateway.url, model, args.parallel - 1, args.batch_seconds)
            reuse = await turn_two_ttft(gateway.url, model, args.turns, seed=1) if layout == args.interactive_layouts[0] else []
        finally:
            gateway.close()
        layouts[layout] = (alone, beside, batch_only, reuse)
    alone, beside, _, reuse = layouts[args.interactive_layouts[0]]
    gateway = Gateway(tmp, f"{model}-nocache", model, new_deployment(builtin, args.parallel, cache_prompt=False, layout=args.interactive_layouts[0], kv_cache=args.kv_cache))
    try:
        no_reuse = await turn_two_ttft(gateway.url, model, args.turns, seed=2)
    finally:
        gateway.close()
    result = summarize(sweeps, peer, alone.ttfts, beside.ttfts, reuse, no_reuse)
    result["interactive_layout"] = args.interactive_layouts[0]
    result["interactive_by_layout"] = {layout: layout_summary(*runs[:3]) for layout, runs in layouts.items()}
    return result


async def batch_throughput(url: str, model: str, clients: int, seconds: float) -> float:
    """Batch-class completion tokens per second with no interactive traffic: ``clients`` looping for ``seconds``."""
    stop = asyncio.Event()
    tokens = 0

    def count_token() -> None:
        nonlocal tokens
        if not stop.is_set():
            tokens += 1

    async def loop(http: httpx.AsyncClient, k: int) -> None:
        i = 0
        while not stop.is_set():
            body = {"model": model, "messages": [{"role": "user", "content": prompt(70_000 + k * 1000 + i)}], "max_tokens": 128, "temperature": 0.7}
            await stream_once(http, url, body, headers={"x-modelyard-class": "batch"}, on_content=count_token)
            i += 1

    async with httpx.AsyncClient(timeout=600, limits=FRESH) as http:
        tasks = [asyncio.create_task(loop(http, k)) for k in range(clients)]
        await asyncio.sleep(3.0)  # fill the engine first
        tokens, t0 = 0, time.monotonic()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return round(tokens / wall, 2)


def layout_summary(alone: InteractiveRun, beside: InteractiveRun, batch_only: float) -> dict[str, Any]:
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    p99_alone, p99_beside = percentile(alone.ttfts, 99), percentile(beside.ttfts, 99)
    return {
        "ttft_p50_ms_interactive_alone": ms(percentile(alone.ttfts, 50)), "ttft_p99_ms_interactive_alone": ms(p99_alone),
        "ttft_p50_ms_interactive_with_batch": ms(percentile(beside.ttfts, 50)), "ttft_p99_ms_interactive_with_batch": ms(p99_beside),
        "p99_ratio_with_batch_vs_alone": round(p99_beside / p99_alone, 2) if p99_alone and p99_beside else None,
        "interactive_samples": [len(alone.ttfts), len(beside.ttfts)],
        "batch_tok_s_beside_interactive": beside.batch_tok_s, "batch_tok_s_alone": batch_only,
    }


def summarize(sweeps: dict[str, list[dict[int, Level]]], peer: dict[str, Any] | None, alone: list[float], beside: list[float],
              reuse: list[float], no_reuse: list[float]) -> dict[str, Any]:
    levels: dict[str, dict[str, Any]] = {}
    for system, runs in sweeps.items():
        if not runs:
            continue
        levels[system] = {}
        for c in runs[0]:
            per_run = [r[c].summary() for r in runs]
            levels[system][f"c{c}"] = {"tok_s": stats([s["tok_s"] for s in per_run]), "runs": per_run}

    def tok(system: str, c: int) -> float | None:
        entry = levels.get(system, {}).get(f"c{c}")
        return entry["tok_s"]["median"] if entry else None

    def rss(system: str, c: int) -> float | None:
        entry = levels.get(system, {}).get(f"c{c}")
        return statistics.median(r["rss_mb"] for r in entry["runs"]) if entry else None

    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {
        "tok_s_c1_old": tok("old", 1), "tok_s_c1_new": tok("new", 1), "tok_s_c1_ceiling": tok("ceiling", 1),
        "tok_s_c8_old": tok("old", 8), "tok_s_c8_new": tok("new", 8), "tok_s_c8_ceiling": tok("ceiling", 8),
        "tok_s_c16_old": tok("old", 16), "tok_s_c16_new": tok("new", 16), "tok_s_c16_ceiling": tok("ceiling", 16),
        "tok_s_c1_shared": tok("shared", 1), "tok_s_c8_shared": tok("shared", 8), "tok_s_c16_shared": tok("shared", 16),
        "tok_s_c8_peer": peer["tok_s"] if peer else None,
        "ttft_p50_ms_interactive_alone": ms(percentile(alone, 50)), "ttft_p99_ms_interactive_alone": ms(percentile(alone, 99)),
        "ttft_p50_ms_interactive_with_batch": ms(percentile(beside, 50)), "ttft_p99_ms_interactive_with_batch": ms(percentile(beside, 99)),
        "interactive_samples": [len(alone), len(beside)],
        "ttft_ms_turn2_reuse": ms(statistics.median(reuse)) if reuse else None,
        "ttft_ms_turn2_no_reuse": ms(statistics.median(no_reuse)) if no_reuse else None,
        "turn2_samples": [len(reuse), len(no_reuse)],
        "rss_mb_c1": rss("new", 1), "rss_mb_c16": rss("new", 16), "rss_mb_c1_old": rss("old", 1), "rss_mb_c16_old": rss("old", 16),
        "levels": levels, "peer_c8": peer,
    }


def report(model: str, r: dict[str, Any]) -> str:
    f = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}x"  # noqa: E731
    rows = [("metric", "old pool", "new (modelyard)", "ceiling (direct)", "new/old", "new/ceiling")]
    for c in LEVELS:
        old, new, ceiling = r.get(f"tok_s_c{c}_old"), r.get(f"tok_s_c{c}_new"), r.get(f"tok_s_c{c}_ceiling")
        if new is not None or old is not None:
            rows.append((f"tok/s c{c}", f(old), f(new), f(ceiling), ratio(new, old), ratio(new, ceiling)))
        if r.get(f"tok_s_c{c}_shared") is not None:
            rows.append((f"tok/s c{c}, new with a shared KV cache", "", f(r[f"tok_s_c{c}_shared"]), "", "new/shared", ratio(new, r[f"tok_s_c{c}_shared"])))
    rows.append(("interactive TTFT p99 ms alone / beside batch", "", f"{f(r['ttft_p99_ms_interactive_alone'])} / {f(r['ttft_p99_ms_interactive_with_batch'])}", "",
                 "", ratio(r["ttft_p99_ms_interactive_with_batch"], r["ttft_p99_ms_interactive_alone"])))
    for layout, v in (r.get("interactive_by_layout") or {}).items():
        rows.append((f"[{layout}] interactive p50 / p99 ms alone", "", f"{f(v['ttft_p50_ms_interactive_alone'])} / {f(v['ttft_p99_ms_interactive_alone'])}", "", "", ""))
        rows.append((f"[{layout}] interactive p50 / p99 ms beside batch", "", f"{f(v['ttft_p50_ms_interactive_with_batch'])} / {f(v['ttft_p99_ms_interactive_with_batch'])}", "", "",
                     f"p99 {f(v['p99_ratio_with_batch_vs_alone'])}x"))
        rows.append((f"[{layout}] batch tok/s alone / beside interactive", "", f"{f(v['batch_tok_s_alone'])} / {f(v['batch_tok_s_beside_interactive'])}", "", "", ""))
    rows.append(("turn-2 TTFT ms reuse / none", "", f"{f(r['ttft_ms_turn2_reuse'])} / {f(r['ttft_ms_turn2_no_reuse'])}", "", "",
                 ratio(r["ttft_ms_turn2_reuse"], r["ttft_ms_turn2_no_reuse"])))
    rows.append(("RSS MB c1 / c16", f"{f(r['rss_mb_c1_old'])} / {f(r['rss_mb_c16_old'])}", f"{f(r['rss_mb_c1'])} / {f(r['rss_mb_c16'])}", "", "", ""))
    return f"{model}\n" + table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="client concurrencies")
    parser.add_argument("--parallel", type=int, default=8, help="slots of the llama.cpp server")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level (at least 6 per level)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the concurrency sweep")
    parser.add_argument("--interactive", type=int, default=300, help="interactive requests alone and beside the batch job")
    parser.add_argument("--turns", type=int, default=5, help="conversations for the turn-2 TTFT")
    parser.add_argument("--quick", action="store_true", help="smoke run: SmolLM2 only, c1 and c8, 20 interactive requests")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--fresh", action="store_true", help="drop models measured by earlier runs from the results file")
    parser.add_argument("--systems", default="old,new,ceiling", help="which of old, new, ceiling, shared (new with a shared KV cache) to sweep")
    parser.add_argument("--layout", choices=("1x2", "2x1", "split", "split-nice"), default="1x2",
                        help="new: one engine with 2 threads; two engines with 1 thread and half the slots each (2x1); or two 1-thread engines, one reserved for interactive and agent work (split; split-nice: the batch one at nice 10)")
    parser.add_argument("--interactive-layouts", default="", help="layouts the interactive runs compare, in one run (default: --layout); "
                        "the first also gives the turn-2 figures")
    parser.add_argument("--kv-cache", choices=("shared", "per_slot"), default="shared",
                        help="the engines' KV cache: shared by the slots, or one stream per slot (attention over a sequence's own tokens)")
    parser.add_argument("--batch-seconds", type=float, default=30.0, help="how long each layout's batch-only throughput is measured")
    parser.add_argument("--ignore-eos", action="store_true", help="sweep requests generate exactly max_tokens (the same work on every system)")
    parser.add_argument("--no-extras", action="store_true", help="the concurrency sweep only (no peer, interactive or turn-2 runs)")
    parser.add_argument("--cache-ram-mib", type=int, help="the interactive and turn-2 engine's host-RAM prompt cache (default: the deployment default, 256)")
    parser.add_argument("--name", default="engine", help="results file name under bench/results/")
    parser.add_argument("--request-class", choices=("interactive", "batch"), help="the sweep's requests through the gateway are of this class "
                        "(batch work is pinned to the engine's top slots; default: no header, so interactive)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.levels, args.repeats, args.interactive, args.turns, args.rounds = "smollm2-135m", "1,8", 1, 20, 2, 1
    args.levels = tuple(int(x) for x in str(args.levels).split(","))
    args.systems = tuple(s for s in str(args.systems).split(",") if s)
    args.interactive_layouts = tuple(x for x in str(args.interactive_layouts).split(",") if x) or (args.layout,)
    # Models measured by an earlier run stay in the file, each with the commit and settings it was measured at.
    name = args.name + ("-quick" if args.quick else "")
    previous = RESULTS / f"{name}.json"
    results: dict[str, Any] = json.loads(previous.read_text()).get("models", {}) if previous.exists() and not args.fresh else {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            results[model] = asyncio.run(measure_model(model, args, Path(tmp))) | {
                "commit": commit(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": {"repeats": args.repeats, "rounds": args.rounds, "levels": list(args.levels), "interactive": args.interactive, "turns": args.turns,
                             "layout": args.layout, "kv_cache": args.kv_cache, "systems": list(args.systems), "request_class": args.request_class, "cache_ram_mib": args.cache_ram_mib,
                             "ignore_eos": args.ignore_eos, "interactive_layouts": list(args.interactive_layouts)},
            }
            print(report(model, results[model]), flush=True)
            data = {
                "models": results, "machine": machine(), "quick": args.quick,
                "settings": {"parallel": args.parallel, "threads": 2, "old_workers": 2, "step_tokens": 64, "decode_threads": DECODE_THREADS,
                             "layout": args.layout, "systems": list(args.systems),
                             "rounds": args.rounds, "repeats": args.repeats, "levels": list(args.levels), "interactive": args.interactive,
                             "turns": args.turns},
                "peer": "llama-cpp-python server" if peer_available() else None,
                # bench/fresh_install.py measures these (bench/results/fresh_install.json).
                "fresh_make_test_s_before": None, "fresh_make_test_s_after": None,
            }
            if not args.no_write:  # after each model, so a long run keeps what it measured
                print("wrote", write_result(name, data))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
