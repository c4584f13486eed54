"""``modelyard router collect``: run the fleet's own models on checkable questions and record who got what right.

Each model answers every sampled question once (greedy decoding, seed 0), the
models side by side, ``concurrency`` questions in flight. An answer's record:
its score (see :mod:`modelyard.training.scoring`; code runs in the sandbox),
its tokens, its seconds, its mean token log-probability (what a cascade
escalates on) and its cost. The cost is what the fleet's accounting charges a
self-hosted replica: the seconds it worked on the answer times its price per
replica-hour, divided by the answers it worked on at once (``concurrency``).

The output is the outcome table that ``modelyard router train`` reads: one
JSON object a line with ``prompt``, ``task``, ``scores{model}``,
``costs{model}`` and the rest for inspection and replay. Collection resumes:
questions already in the file are not asked again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.config import FleetConfig
from modelyard.pipeline.fleet import FleetRuntime
from modelyard.protocol import ModelCall, Sampling
from modelyard.training.questions import Kind, Question, score

MAX_TOKENS: dict[Kind, int] = {"choice": 8, "number": 320, "short": 24, "code": 320}
STOPS: dict[Kind, tuple[str, ...]] = {"choice": (), "number": (), "short": ("\n",), "code": ("\n```\n",)}


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One model's answer to one question, as generated."""

    text: str
    seconds: float
    completion_tokens: int
    mean_logprob: float | None  # over the answer's tokens; None when the backend gave none


def collection_fleet(config: FleetConfig, models: list[str]) -> FleetConfig:
    """The fleet reduced to the models being measured, each with its first deployment and no fallbacks."""
    chosen = []
    for name in models:
        model = config.model(name)
        if model is None or model.kind != "chat":
            known = ", ".join(m.name for m in config.models if m.kind == "chat")
            raise ValueError(f"{name!r} is not a chat model of the fleet (chat models: {known})")
        chosen.append(dataclasses.replace(model, deployments=model.deployments[:1], fallbacks=()))
    return dataclasses.replace(config, models=tuple(chosen), aliases=())


def question_key(question: Question) -> str:
    """A question's identity in the outcome file (its task and prompt)."""
    return hashlib.sha256(f"{question.task}\x00{question.prompt}".encode()).hexdigest()[:16]


def already_collected(out: Path) -> set[str]:
    """Keys of the questions the file already answers (a torn last line is ignored and rewritten)."""
    if not out.exists():
        return set()
    keys = set()
    for line in out.read_text(encoding="utf-8").split("\n"):
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError, TypeError):
            continue
    return keys


async def collect(config: FleetConfig, questions: list[Question], out: Path, data_dir: Path, concurrency: int = 1,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Answer every question not yet in ``out`` with every model of ``config``; append one outcome line each."""
    done_keys = already_collected(out)
    todo = [q for q in questions if question_key(q) not in done_keys]
    _drop_torn_line(out)
    fleet = FleetRuntime(config, data_dir)
    await fleet.start()
    prices = {m.name: m.deployments[0].price.replica_hour for m in config.models}
    deployments = {m.name: m.deployments[0].name for m in config.models}
    gate = asyncio.Semaphore(max(1, concurrency))
    finished = 0
    started = time.monotonic()

    async def one(question: Question, f: Any) -> None:
        nonlocal finished
        async with gate:
            answers = await asyncio.gather(*(_answer(fleet, name, deployments[name], question) for name in prices))
            by_model = dict(zip(prices, answers, strict=True))
            scores = {name: await asyncio.to_thread(score, question, a.text) for name, a in by_model.items()}
        f.write(json.dumps(_outcome(question, by_model, scores, prices, concurrency)) + "\n")
        f.flush()
        finished += 1
        if progress is not None:
            progress(finished, len(todo))
        elif finished % 20 == 0 or finished == len(todo):
            print(f"{finished}/{len(todo)} questions, {time.monotonic() - started:.0f}s", file=sys.stderr)

    try:
        with out.open("a", encoding="utf-8") as f:
            await asyncio.gather(*(one(q, f) for q in todo))
    finally:
        await fleet.aclose()
    return len(todo)


def _drop_torn_line(out: Path) -> None:
    """A run killed mid-write leaves a line without its newline: cut it so appends start clean."""
    if not out.exists():
        return
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        out.write_bytes(data[: data.rfind(b"\n") + 1])


async def _answer(fleet: FleetRuntime, model: str, deployment: str, question: Question) -> Answer:
    sampling = Sampling(max_tokens=MAX_TOKENS[question.kind], temperature=0.0, seed=0, stop=STOPS[question.kind], logprobs=True)
    call = ModelCall(kind="chat", model=model, messages=({"role": "user", "content": question.prompt},), sampling=sampling)
    began = time.monotonic()
    parts: list[str] = []
    logprobs: list[float] = []
    completion_tokens = 0
    async for chunk in fleet.generate(deployment, call):
        parts.append(chunk.text)
        logprobs += [lp.logprob for lp in chunk.logprobs]
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
    mean = sum(logprobs) / len(logprobs) if logprobs else None
    return Answer("".join(parts), time.monotonic() - began, completion_tokens or len(logprobs), mean)


def _outcome(question: Question, answers: dict[str, Answer], scores: dict[str, float], prices: dict[str, float], concurrency: int) -> dict[str, Any]:
    return {
        "key": question_key(question),
        "prompt": question.prompt,
        "task": question.task,
        "kind": question.kind,
        "answer": question.answer,
        "scores": {m: round(s, 4) for m, s in scores.items()},
        "costs": {m: a.seconds * prices[m] / 3600 / max(1, concurrency) for m, a in answers.items()},
        "seconds": {m: round(a.seconds, 4) for m, a in answers.items()},
        "tokens": {m: a.completion_tokens for m, a in answers.items()},
        "mean_logprob": {m: None if a.mean_logprob is None else round(a.mean_logprob, 5) for m, a in answers.items()},
        "outputs": {m: a.text for m, a in answers.items()},
    }
