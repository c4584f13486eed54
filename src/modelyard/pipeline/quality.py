"""Output validation, repair and cascades.

When a request asks for JSON (``response_format``), or its alias has
validators or is a cascade, the answer is collected and checked before the
client sees it: a failed check is retried once on the same model with the
problem added to the prompt, then escalated to the alias's next model. A
cascade also escalates when the answer's mean token logprob is below the
alias's ``min_mean_logprob``. Streaming clients of such requests receive the
checked answer as a stream once it has passed.
"""

from __future__ import annotations

import dataclasses

from modelyard.config import FleetConfig, ValidatorConfig
from modelyard.errors import OutputRejected
from modelyard.pipeline.streams import gather_streams, replay, text_of
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.protocol import Chunk, ModelCall
from modelyard.reliability.validators import first_violation, mean_logprob, response_format_validators


def quality(config: FleetConfig) -> Stage:
    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            if request.call is None:
                return await next_handler(request)
            alias = config.alias(request.model)
            checks = response_format_validators(request.call.response_format) + (alias.validators if alias else ())
            threshold = alias.min_mean_logprob if alias is not None and alias.strategy == "cascade" else None
            if not checks and threshold is None:
                return await next_handler(request)
            return await _checked(request, next_handler, config, checks, threshold)

        return handle

    return stage


async def _checked(request: Request, next_handler: Handler, config: FleetConfig, checks: tuple[ValidatorConfig, ...], threshold: float | None) -> Response:
    assert request.call is not None and request.served_model is not None
    client_call = request.call
    base_call = client_call
    if threshold is not None and not client_call.sampling.logprobs:
        base_call = dataclasses.replace(client_call, sampling=dataclasses.replace(client_call.sampling, logprobs=True))
    candidates = [request.served_model, *request.escalations]
    problem = ""
    for index, model_name in enumerate(candidates):
        if index > 0:
            _escalate(request, config, model_name)
        call = base_call
        for repairing in (False, True):
            request.call = call
            response = await next_handler(request)
            choices = await gather_streams(response.streams)
            problem = _problem(choices, checks)
            if not problem:
                confidence = _confidence(choices)
                if threshold is not None and confidence is not None and confidence < threshold and index + 1 < len(candidates):
                    break  # unsure: escalate without a repair round
                return _passed(response, choices, keep_logprobs=client_call.sampling.logprobs)
            if repairing:
                break
            call = _with_repair(base_call, text_of(choices[0]), problem)
    request.call = client_call
    raise OutputRejected(f"no model produced an answer that passes the checks; last problem: {problem}")


def _escalate(request: Request, config: FleetConfig, model_name: str) -> None:
    model = config.model(model_name)
    assert model is not None
    request.served_model = model_name
    request.plan = [model_name, *model.fallbacks]
    request.route_reason = f"{request.route_reason}; escalated={model_name}"


def _problem(choices: list[list[Chunk]], checks: tuple[ValidatorConfig, ...]) -> str:
    for chunks in choices:
        if chunks and chunks[-1].finish_reason == "length":
            continue  # cut off by the client's own max_tokens: returned as is, finish_reason says so
        violation = first_violation(text_of(chunks), checks)
        if violation:
            return violation
    return ""


def _confidence(choices: list[list[Chunk]]) -> float | None:
    means = [mean_logprob(lp.logprob for c in chunks for lp in c.logprobs) for chunks in choices]
    known = [m for m in means if m is not None]
    return min(known) if known else None


def _with_repair(call: ModelCall, answer: str, problem: str) -> ModelCall:
    note = f"Your previous answer was rejected: {problem}. Reply again with only the corrected answer."
    if call.kind == "chat":
        messages = (*call.messages, {"role": "assistant", "content": answer}, {"role": "user", "content": note})
        return dataclasses.replace(call, messages=messages)
    return dataclasses.replace(call, prompt=f"{call.prompt}{answer}\n\n{note}\n")


def _passed(response: Response, choices: list[list[Chunk]], keep_logprobs: bool) -> Response:
    if not keep_logprobs:
        choices = [[dataclasses.replace(c, logprobs=()) for c in chunks] for chunks in choices]
    response.streams = [replay(chunks) for chunks in choices]
    return response
