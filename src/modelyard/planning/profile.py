"""Measure a deployment's speed: the engine model the planner simulates with.

A profile is two fitted curves, measured through the deployment's own adapter
(so a local llama.cpp engine and a remote vLLM are probed the same way):

- **prefill**: time to first token of a lone request against its prompt
  length, fitted as ``fixed_s + per_token_s x tokens`` (least squares);
- **decode**: the time between two streamed tokens while ``k`` requests
  generate together, for k = 1, 2, 4, ... up to the deployment's slots (the
  median interval of every request of the round);
- **mixed**: the time to first token of a prompt that arrives while ``k``
  others are generating (k = 1 .. slots - 1): how much a prompt and running
  answers slow each other down when one engine step carries both.

Saved as ``<out>/<deployment id with / as __>.json``.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.backends.base import Backend
from modelyard.protocol import ModelCall, Sampling

PROMPT_LENGTHS = (1, 16, 64, 256, 768)  # 1: the chat template alone, the floor of every prompt
DECODE_TOKENS = 32
MIXED_LENGTHS = (64, 256)  # prompt words sent while others generate
MIXED_ANSWER_TOKENS = 2000  # long enough to outlast the probe; cancelled after it
MIXED_START_TIMEOUT_S = 60.0
FILLER = "the quick brown fox jumps over a lazy dog and keeps on running across the wide green field"


@dataclass(frozen=True, slots=True)
class Timing:
    ttft_s: float
    total_s: float
    prompt_tokens: int
    completion_tokens: int

    @property
    def interval_s(self) -> float | None:
        """Mean time between streamed tokens after the first."""
        if self.completion_tokens < 2:
            return None
        return (self.total_s - self.ttft_s) / (self.completion_tokens - 1)


def prompt_of(words: int, salt: int, filler: Sequence[str] = tuple(FILLER.split())) -> str:
    """About ``words`` tokens; ``salt`` makes it unique within a profile, ``filler`` (a word order of its own per
    profile) across profiles, so no prefix cache helps, not even that of a server profiled before."""
    return f"{salt} " + " ".join(filler[(salt + i) % len(filler)] for i in range(max(1, words - 1)))


def shuffled_filler(rng: random.Random) -> tuple[str, ...]:
    """The filler words in an order of this profile's own.

    Salts once started at 1 in every profile, so without it a second profile of the same
    running server sent the first one's prompts again and the engine's prompt cache
    answered them: prefill looked almost free (a negative per-token slope). Salts now
    start at a random offset too (a one-word prompt could still repeat).
    """
    words = FILLER.split()
    rng.shuffle(words)
    return tuple(words)


async def timed(backend: Backend, call: ModelCall) -> Timing:
    started = time.monotonic()
    first: float | None = None
    usage = None
    async for chunk in backend.generate(call):
        if first is None and (chunk.text or chunk.finish_reason is not None):
            first = time.monotonic() - started
        if chunk.usage is not None:
            usage = chunk.usage
    total = time.monotonic() - started
    return Timing(first if first is not None else total, total, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)


def chat(model: str, text: str, max_tokens: int) -> ModelCall:
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
    return ModelCall(kind="chat", model=model, sampling=sampling, messages=({"role": "user", "content": text},))


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` through ``(x, y)`` points (slope 0 for a single x)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


async def _generating(backend: Backend, call: ModelCall, started: asyncio.Event) -> None:
    async for chunk in backend.generate(call):
        if chunk.text:
            started.set()


async def _mixed(backend: Backend, model: str, slots: int, repeats: int, salt: int, filler: Sequence[str]) -> list[list[float]]:
    """TTFT of prompts arriving while ``k`` long answers are being generated."""
    points: list[list[float]] = []
    for k in range(1, slots):
        for length in MIXED_LENGTHS:
            for _ in range(repeats):
                flags = [asyncio.Event() for _ in range(k)]
                long_answers = Sampling(max_tokens=MIXED_ANSWER_TOKENS, temperature=0.0, ignore_eos=True)
                calls = [ModelCall(kind="chat", model=model, sampling=long_answers, messages=({"role": "user", "content": prompt_of(16, salt + i, filler)},)) for i in range(k)]
                salt += k
                tasks = [asyncio.create_task(_generating(backend, c, f)) for c, f in zip(calls, flags, strict=True)]
                try:
                    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), MIXED_START_TIMEOUT_S)
                    t = await timed(backend, chat(model, prompt_of(length, salt, filler), 1))
                    points.append([k, t.prompt_tokens, round(t.ttft_s, 4)])
                except TimeoutError:
                    pass  # the engine could not start k answers at once: no point at this k
                finally:
                    salt += 1
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
    return points


def batch_sizes(slots: int) -> list[int]:
    sizes, k = [], 1
    while k <= slots:
        sizes.append(k)
        k *= 2
    if sizes[-1] != slots:
        sizes.append(slots)
    return sizes


async def profile_backend(
    backend: Backend, model: str, slots: int, repeats: int = 2, max_prompt: int = 4096, rng: random.Random | None = None
) -> dict[str, Any]:
    """The deployment's prefill line and decode intervals by batch size (``rng``: the prompts' word order; a fresh one by default)."""
    rng = rng or random.Random()
    filler = shuffled_filler(rng)
    await timed(backend, chat(model, prompt_of(8, 0, filler), 2))  # warm-up: first-call costs are not the model's speed
    prefill_points: list[tuple[float, float]] = []
    overheads: list[int] = []
    # Salts of this profile's own too: two word orders can still agree on a short prompt's one or two words.
    salt = 1 + 10_000 * rng.randrange(100_000)
    for length in (n for n in PROMPT_LENGTHS if n < max_prompt):
        for _ in range(repeats):
            t = await timed(backend, chat(model, prompt_of(length, salt, filler), 1))
            salt += 1
            prefill_points.append((float(t.prompt_tokens), t.ttft_s))
            overheads.append(t.prompt_tokens - length)
    fixed_s, per_token_s = fit_line(prefill_points)
    decode: dict[str, float] = {}
    for k in batch_sizes(slots):
        intervals: list[float] = []
        for _ in range(repeats):
            round_ = await asyncio.gather(*(timed(backend, chat(model, prompt_of(16, salt + i, filler), DECODE_TOKENS)) for i in range(k)))
            salt += k
            intervals += [t.interval_s for t in round_ if t.interval_s is not None]
        if intervals:
            decode[str(k)] = round(statistics.median(intervals), 6)
    mixed = await _mixed(backend, model, slots, repeats, salt + 1000, filler)
    return {
        "prefill": {"fixed_s": round(fixed_s, 6), "per_token_s": round(per_token_s, 8), "points": [[int(x), round(y, 4)] for x, y in prefill_points]},
        "decode_interval_s": decode,
        "mixed_prefill": mixed,  # [decoding, prompt tokens, seconds to first token]
        # What the chat template adds to every prompt: a trace counts the user's tokens, the engine reads these too.
        "prompt_overhead_tokens": int(statistics.median(overheads)) if overheads else 0,
        "slots": slots,
        "repeats": repeats,
    }
