"""Run llama.cpp's own server (through ``xllamacpp``) as a supervised process.

Run as ``python -m modelyard.backends.llama_server_launcher --model-file F ...``.
The native server runs inside this process, so a crash in llama.cpp is a
process death that :class:`~modelyard.fleet.supervisor.SupervisedProcess`
sees and restarts. It speaks the supervisor's JSON lines on stdio:

    out: {"ev": "ready", "base_url": "http://127.0.0.1:PORT", "n_ctx": ..., "parallel": ...}
         {"ev": "pong"}                      answered only when the server's /health says ok
         {"ev": "fatal", "message": ...}      the model could not be loaded; exits
    in:  {"op": "ping"}

Requests themselves go over HTTP to ``base_url`` (loopback only). When stdin
closes (the supervisor died or is stopping) the process exits, so no engine
outlives its parent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from typing import IO, Any

HEALTH_TIMEOUT_S = 10.0


def build_params(args: argparse.Namespace) -> Any:
    """xllamacpp's CommonParams for one model: loopback, n slots sharing one unified KV cache."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model_file
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.parallel * args.n_ctx
    # Unified: any slot may use what the others leave free, but every sequence's attention spans
    # the whole shared buffer (llama.cpp computes the cross-sequence part and discards it). Split:
    # one KV stream per slot of n_ctx tokens each, and attention over the sequence's own tokens only.
    params.kv_unified = not args.kv_split
    params.cont_batching = True
    params.cache_prompt = args.cache_prompt  # a slot keeps its last prompt; a request sharing its prefix reuses it
    params.slot_prompt_similarity = args.slot_similarity
    params.cache_ram_mib = args.cache_ram_mib if args.cache_prompt else 0  # prompts evicted from slots stay reusable from RAM
    # Steps of one token (one sequence decoding) vs steps of many (prompts, or
    # several sequences decoding together): a small model decodes one token
    # faster on one thread than on two that must synchronise (measured here:
    # 41 vs 26 tok/s for SmolLM2), while prompts gain from every core.
    params.cpuparams.n_threads = args.decode_threads or args.threads
    params.cpuparams_batch.n_threads = args.threads
    # Idle threads sleep instead of spinning: the gateway and other engines share these cores.
    params.cpuparams.poll = args.poll
    params.cpuparams_batch.poll = args.poll
    if args.n_batch:
        params.n_batch = args.n_batch  # prompt tokens per engine step: smaller steps let a newcomer in sooner
        params.n_ubatch = args.n_batch
    params.n_threads_http = max(2, args.parallel)
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.use_jinja = True  # the model's own chat template, tools included
    params.warmup = True
    params.verbosity = args.verbosity
    return params


def send(out: IO[str], event: dict[str, Any]) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=HEALTH_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="modelyard's launcher for llama.cpp's server (speaks JSON lines on stdio)")
    parser.add_argument("--model-file", required=True, help="GGUF file")
    parser.add_argument("--parallel", type=int, default=4, help="slots: sequences decoded together")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context tokens per slot (the KV cache holds parallel x this)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for prompt and generation")
    parser.add_argument("--slot-similarity", type=float, default=0.1, help="prompt similarity above which a request reuses a slot's cache")
    parser.add_argument("--cache-ram-mib", type=int, default=256, help="host RAM for prompts evicted from slots (0: off)")
    parser.add_argument("--no-cache-prompt", dest="cache_prompt", action="store_false", help="re-read every prompt in full (no prefix reuse)")
    parser.add_argument("--decode-threads", type=int, default=0, help="threads for one-token steps (0: --threads)")
    parser.add_argument("--poll", type=int, default=0, help="thread polling level 0-100 (0: sleep when idle)")
    parser.add_argument("--n-batch", type=int, default=64, help="prompt tokens per engine step (0: llama.cpp's default)")
    parser.add_argument("--kv-split", action="store_true", help="one KV cache stream per slot (attention over each sequence's own tokens only)")
    parser.add_argument("--nice", type=int, default=0, help="lower the engine's CPU priority by this much (0-19) before it starts")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: any free one)")
    parser.add_argument("--verbosity", type=int, default=1, help="llama.cpp's log verbosity on stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # before the engine's threads exist: they inherit it
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever llama.cpp prints lands on stderr, never in the protocol
    sys.stdout = sys.stderr
    try:
        import xllamacpp

        server = xllamacpp.Server(build_params(args))
    except Exception as exc:  # xllamacpp reports a bad file or option as a plain exception
        message = f"cannot start llama.cpp's server for {args.model_file}: {exc}"
        print(f"modelyard llama-server launcher: {message}", file=sys.stderr)
        send(protocol_out, {"ev": "fatal", "message": message})
        sys.exit(3)
    base_url = str(server.listening_address).rstrip("/")
    send(protocol_out, {"ev": "ready", "base_url": base_url, "n_ctx": args.n_ctx, "parallel": args.parallel})
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("op") == "ping" and healthy(base_url):
            send(protocol_out, {"ev": "pong"})
    os._exit(0)  # parent gone: never outlive it (skips the native server's slow teardown)


if __name__ == "__main__":
    main()
