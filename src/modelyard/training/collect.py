"""``modelyard router collect``: run the fleet's own models on checkable questions and record who got what right.

Each model answers every sampled question once (greedy decoding, one worker
per model, the models side by side). A question's cost on a model is what the
fleet's accounting would charge: the seconds the replica was busy times the
deployment's price per replica-hour. The output is the outcome table that
``modelyard router train`` reads: one JSON object a line with ``prompt``,
``scores{model}`` and ``costs{model}`` (plus the task, the answers and the
seconds, for inspection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from modelyard.config import FleetConfig
from modelyard.pipeline.fleet import FleetRuntime
from modelyard.protocol import ModelCall, Sampling
from modelyard.training.questions import Question, score

CHOICE_MAX_TOKENS = 4
NUMBER_MAX_TOKENS = 320


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    text: str
    seconds: float


def collection_fleet(config: FleetConfig, models: list[str]) -> FleetConfig:
    """The fleet reduced to the models being measured, each with one deployment of one worker."""
    chosen = []
    for name in models:
        model = config.model(name)
        if model is None or model.kind != "chat":
            known = ", ".join(m.name for m in config.models if m.kind == "chat")
            raise ValueError(f"{name!r} is not a chat model of the fleet (chat models: {known})")
        chosen.append(dataclasses.replace(model, deployments=model.deployments[:1], fallbacks=()))
    return dataclasses.replace(config, models=tuple(chosen), aliases=())


async def collect(config: FleetConfig, questions: list[Question], out: Path, data_dir: Path) -> int:
    """Answer every question with every model of ``config``; write one outcome line per question."""
    fleet = FleetRuntime(config, data_dir)
    await fleet.start()
    prices = {m.name: m.deployments[0].price.replica_hour for m in config.models}
    started = time.monotonic()
    try:
        with out.open("w", encoding="utf-8") as f:
            for done, question in enumerate(questions, 1):
                answers = await asyncio.gather(*(_answer(fleet, m.name, m.deployments[0].name, question) for m in config.models))
                f.write(json.dumps(_outcome(question, dict(zip(prices, answers, strict=True)), prices)) + "\n")
                f.flush()
                if done % 25 == 0 or done == len(questions):
                    print(f"{done}/{len(questions)} questions, {time.monotonic() - started:.0f}s", file=sys.stderr)
    finally:
        await fleet.aclose()
    return len(questions)


async def _answer(fleet: FleetRuntime, model: str, deployment: str, question: Question) -> Answer:
    limit = CHOICE_MAX_TOKENS if question.kind == "choice" else NUMBER_MAX_TOKENS
    call = ModelCall(kind="chat", model=model, messages=({"role": "user", "content": question.prompt},), sampling=Sampling(max_tokens=limit, temperature=0.0, seed=0))
    began = time.monotonic()
    parts = [chunk.text async for chunk in fleet.generate(deployment, call)]
    return Answer("".join(parts), time.monotonic() - began)


def _outcome(question: Question, answers: dict[str, Answer], prices: dict[str, float]) -> dict[str, Any]:
    return {
        "prompt": question.prompt,
        "task": question.task,
        "answer": question.answer,
        "scores": {m: score(question, a.text) for m, a in answers.items()},
        "costs": {m: a.seconds * prices[m] / 3600 for m, a in answers.items()},
        "seconds": {m: round(a.seconds, 4) for m, a in answers.items()},
        "outputs": {m: a.text for m, a in answers.items()},
    }
