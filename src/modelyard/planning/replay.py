"""Real load from a trace against any OpenAI-compatible endpoint.

Each request of the trace is sent at its arrival time as a streamed chat
completion: a prompt synthesized to the trace's input length (requests that
share ``hash_ids`` blocks share those prefixes), ``max_tokens`` = the trace's
output length, and the workload class from the trace when it names one
(tenants are who the API key says, so one replay is one tenant). What comes back is measured: time to first token, time per output
token, end to end, and whether the request was refused (429) or failed.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import httpx

from modelyard.planning.traces import BLOCK_TOKENS, TraceRequest

# Short common words: about one token each for the shipped models' tokenizers.
WORDS = tuple(
    ["time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world", "school", "state", "family", "student", "group", "country", "problem", "hand", "part", "place", "case", "week", "company", "system", "program", "question", "work", "government", "number", "night", "point", "home", "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book", "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city", "community", "name", "president", "team", "minute", "idea", "kid", "body", "information", "back"]
)
KEEP_GOING = "Continue this list of words for as long as you can, never stopping: "


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How the trace is sent."""

    base_url: str  # up to and including /v1
    model: str
    api_key: str | None = None
    token_scale: float = 1.0  # only for the size of hash_id blocks; the trace is scaled before it gets here
    ignore_eos: bool = False  # send ignore_eos (vLLM, llama-server) so generation runs to max_tokens
    timeout_s: float = 600.0
    max_connections: int = 1000
    calibrate: bool = True  # measure the endpoint's tokens per synthesized word first, so prompts have the trace's token counts


@dataclass(slots=True)
class Outcome:
    """What happened to one request."""

    arrival_s: float
    status: int = 0  # HTTP status; 0: the connection failed
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0  # as the engine counted them (usage): the synthesized prompt's real size
    error: str = ""
    model: str = ""  # x-modelyard-model: the model that answered (a modelyard endpoint only)
    deployment: str = ""  # x-modelyard-deployment


@dataclass(slots=True)
class ReplayResult:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    words_per_token: float = 1.0  # what calibration found (1.0: not calibrated)
    preamble_tokens: float = 0.0  # tokens the synthesized preamble ("Request N. Continue ...") costs beyond its words


def synthesize_prompt(request: TraceRequest, index: int, block_tokens: int) -> str:
    """About ``input_tokens`` words; the blocks named by ``hash_ids`` are the same text wherever they occur."""
    parts = []
    budget = request.input_tokens
    for block in request.hash_ids:
        if budget <= 0:
            break
        n = min(block_tokens, budget)
        rng = random.Random(block * 7919 + 17)
        parts.append(" ".join(rng.choice(WORDS) for _ in range(n)))
        budget -= n
    rng = random.Random(index)
    tail = max(0, budget - len(KEEP_GOING.split()) - 2)
    parts.append(f"Request {index}. {KEEP_GOING}" + " ".join(rng.choice(WORDS) for _ in range(tail)))
    return " ".join(parts)


def request_body(request: TraceRequest, index: int, options: ReplayOptions, words_per_token: float = 1.0, preamble_tokens: float = 0.0) -> dict[str, Any]:
    block = max(1, round(BLOCK_TOKENS * options.token_scale * words_per_token))
    words = replace(request, input_tokens=max(1, round((request.input_tokens - preamble_tokens) * words_per_token)))
    body: dict[str, Any] = {
        "model": request.model or options.model,
        "messages": [{"role": "user", "content": synthesize_prompt(words, index, block)}],
        "max_tokens": max(1, request.output_tokens),
        "temperature": 0.7,
        "seed": index,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if options.ignore_eos:
        body["ignore_eos"] = True
    return body


def request_headers(request: TraceRequest, options: ReplayOptions) -> dict[str, str]:
    headers = {}
    if options.api_key:
        headers["authorization"] = f"Bearer {options.api_key}"
    if request.workload:
        headers["x-modelyard-class"] = request.workload
    return headers


async def send_one(http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str], outcome: Outcome) -> None:
    started = time.monotonic()
    try:
        async with http.stream("POST", url, json=body, headers=headers) as response:
            outcome.status = response.status_code
            outcome.model = response.headers.get("x-modelyard-model", "")
            outcome.deployment = response.headers.get("x-modelyard-deployment", "")
            if response.status_code != 200:
                outcome.error = (await response.aread()).decode("utf-8", "replace")[:200]
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    outcome.error = str(event["error"].get("message", "stream error"))[:200]
                    return
                if outcome.ttft_s is None and any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                    outcome.ttft_s = time.monotonic() - started
                if event.get("usage"):
                    outcome.output_tokens = int(event["usage"].get("completion_tokens") or 0)
                    outcome.prompt_tokens = int(event["usage"].get("prompt_tokens") or 0)
        outcome.e2e_s = time.monotonic() - started
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:200]


async def replay(requests: Sequence[TraceRequest], options: ReplayOptions,
                 progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Send every request at its arrival time (open loop: a slow answer never delays the next arrival)."""
    url = options.base_url.rstrip("/") + "/chat/completions"
    result = ReplayResult(outcomes=[Outcome(r.arrival_s) for r in requests])
    done = 0
    limits = httpx.Limits(max_connections=options.max_connections, max_keepalive_connections=options.max_connections)
    async with httpx.AsyncClient(timeout=options.timeout_s, limits=limits) as http:
        if options.calibrate:
            result.words_per_token, result.preamble_tokens = await calibrate(http, url, options, requests[0] if requests else TraceRequest(0.0, 1, 1))
        start = time.monotonic()

        async def one(i: int, request: TraceRequest) -> None:
            nonlocal done
            await asyncio.sleep(max(0.0, start + request.arrival_s - time.monotonic()))
            body = request_body(request, i, options, result.words_per_token, result.preamble_tokens)
            await send_one(http, url, body, request_headers(request, options), result.outcomes[i])
            done += 1
            if progress is not None:
                progress(done, len(requests))

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        result.wall_s = time.monotonic() - start
    return result


CALIBRATION_WORDS = (40, 440)


async def calibrate(http: httpx.AsyncClient, url: str, options: ReplayOptions, sample: TraceRequest) -> tuple[float, float]:
    """(synthesized words per token, the preamble's extra tokens) of the endpoint's tokenizer, from ``usage.prompt_tokens``.

    Two synthesized probes give tokens = a + n / words_per_token; a one-word
    message gives the chat template alone. What ``a`` holds beyond the template
    is the preamble every synthesized prompt starts with, and is taken off each
    prompt's budget. (1.0, 0.0) when the endpoint reports no usage.
    """
    counts = []
    for n in CALIBRATION_WORDS:
        probe = replace(sample, input_tokens=n, output_tokens=1, hash_ids=())
        outcome = Outcome(0.0)
        await send_one(http, url, request_body(probe, -n, options), request_headers(probe, options), outcome)
        counts.append(outcome.prompt_tokens)
    bare = Outcome(0.0)
    body = request_body(replace(sample, output_tokens=1), -1, options) | {"messages": [{"role": "user", "content": "hello"}]}
    await send_one(http, url, body, request_headers(sample, options), bare)
    short, long = counts
    if outcome.status != 200 or bare.status != 200 or long <= short:
        return 1.0, 0.0
    words_per_token = min(3.0, max(0.3, (CALIBRATION_WORDS[1] - CALIBRATION_WORDS[0]) / (long - short)))
    at_zero = short - CALIBRATION_WORDS[0] / words_per_token
    template = bare.prompt_tokens - 1
    return words_per_token, max(0.0, at_zero - template)


def latency_figures(ttft: Sequence[float], tpot: Sequence[float], e2e: Sequence[float]) -> dict[str, float | None]:
    """The percentiles ``replay`` and ``plan`` both report, in milliseconds (nearest rank)."""
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p90_ms": ms(percentile(ttft, 90)), "ttft_p99_ms": ms(percentile(ttft, 99)),
        "tpot_p50_ms": ms(percentile(tpot, 50)), "tpot_p99_ms": ms(percentile(tpot, 99)),
        "e2e_p50_ms": ms(percentile(e2e, 50)), "e2e_p90_ms": ms(percentile(e2e, 90)), "e2e_p99_ms": ms(percentile(e2e, 99)),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(result: ReplayResult) -> dict[str, Any]:
    """The replay's figures: the keys ``plan`` reports too."""
    ok = [o for o in result.outcomes if o.status == 200 and not o.error and o.e2e_s is not None]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    e2e = [o.e2e_s for o in ok if o.e2e_s is not None]
    tpot = [(o.e2e_s - o.ttft_s) / (o.output_tokens - 1) for o in ok if o.ttft_s is not None and o.e2e_s is not None and o.output_tokens > 1]
    total = len(result.outcomes)
    return {
        "requests": total,
        "completed": len(ok),
        "rejected_rate": round(sum(1 for o in result.outcomes if o.status == 429) / total, 4) if total else 0.0,
        "error_rate": round(sum(1 for o in result.outcomes if o.status not in (200, 429) or (o.status == 200 and o.error)) / total, 4) if total else 0.0,
        **latency_figures(ttft, tpot, e2e),
        "throughput_rps": round(len(ok) / result.wall_s, 3) if result.wall_s else None,
        "output_tokens": sum(o.output_tokens for o in ok),
        "wall_s": round(result.wall_s, 2),
        "cost_usd": None,  # read from the ledger (modelyard usage) for a modelyard endpoint
    }


def outcomes_jsonl(requests: Sequence[TraceRequest], result: ReplayResult) -> str:
    """One line per request, in trace order: what happened to it (for comparing with ``plan``'s simulation)."""
    lines = []
    for i, (r, o) in enumerate(zip(requests, result.outcomes, strict=True)):
        item = {"index": i, "arrival_s": round(r.arrival_s, 6), "status": o.status, "model": o.model, "deployment": o.deployment,
                "ttft_s": o.ttft_s, "e2e_s": o.e2e_s, "output_tokens": o.output_tokens, "prompt_tokens": o.prompt_tokens, "error": o.error}
        lines.append(json.dumps(item, separators=(",", ":")))
    return "\n".join(lines) + "\n"


class ProgressBar:
    """A one-line progress bar on a terminal (nothing when not a terminal)."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.enabled = out.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(1, total))
        self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            self.out.write("\n")
        self.out.flush()
