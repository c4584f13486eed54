"""Retries and failover as a pure policy: the next step, given what happened.

:func:`failover` is a generator. It yields a step (:class:`TryDeployment` or
:class:`Pause`); the driver performs it and sends back what happened: the
attempt's error, or ``None`` after a pause. When the driver's attempt succeeds
it simply stops asking. When nothing is left to try the generator raises the
error the client should see.

The live dispatcher drives it with real streams and ``asyncio.sleep``; the
planner's simulator drives it with simulated replicas and simulated time. Both
therefore retry, back off, fail over and shed load by the same rules:

- deployments of a model first (the picker skips those already tried), then
  the model's fallbacks in order;
- a context-window overflow skips straight to a fallback with a larger window;
- an error that is not retryable (a bad request) ends it at once;
- an overloaded deployment with no untried sibling ends the model's turn, so
  the client gets its 429 and Retry-After now instead of after backoffs;
- the same deployment is retried only after a full-jitter backoff, capped by
  the request's deadline.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelyard.config import FleetConfig, ModelConfig
from modelyard.errors import ContextWindowExceeded, ModelyardError, NotReady, Overloaded, UpstreamTimeout
from modelyard.reliability.retry import backoff_s, is_retryable


@dataclass(frozen=True, slots=True)
class TryDeployment:
    """Send the request to ``deployment`` of ``model``."""

    model: ModelConfig
    deployment: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait before the next try."""

    seconds: float


Step = TryDeployment | Pause
Failover = Generator[Step, ModelyardError | None, None]


class Picker(Protocol):
    """The part of :class:`~modelyard.pipeline.picker.DeploymentPicker` the policy asks."""

    def pick(self, model: ModelConfig, exclude: set[str], session: str | None = None, workload: str = "interactive") -> str | None: ...

    def untried_available(self, model: ModelConfig, tried: set[str], workload: str = "interactive") -> bool: ...

    def unavailable(self, model: ModelConfig) -> NotReady: ...


@dataclass(frozen=True, slots=True)
class FailoverInputs:
    """One request's side of the policy."""

    models: Sequence[str]  # the served model, then its fallbacks
    deadline: float
    session: str | None = None
    avoid: frozenset[str] = frozenset()  # deployments that already failed this request mid-answer
    exhausted: str = "no model could serve the request"
    workload: str = "interactive"  # the request's class: deployments may be reserved for some classes


def failover(config: FleetConfig, picker: Picker, inputs: FailoverInputs, clock: Callable[[], float], rng: random.Random) -> Failover:
    """The steps of one request; see the module docstring for the protocol."""
    last: ModelyardError | None = None
    overflow_window = 0
    for model_name in inputs.models:
        model = config.model(model_name)
        if model is None or (overflow_window and model.context_window <= overflow_window):
            continue
        tried: set[str] = set(inputs.avoid)
        for attempt_no in range(1, model.retry.max_attempts + 1):
            if clock() >= inputs.deadline:
                raise last or UpstreamTimeout("the request's deadline passed before any deployment answered")
            deployment = picker.pick(model, tried, inputs.session, inputs.workload)
            if deployment is None:
                last = picker.unavailable(model)
                break
            tried.add(deployment)
            error = yield TryDeployment(model, deployment)
            if error is None:
                raise RuntimeError("failover: send the attempt's error, or stop iterating on success")
            last = error
            if isinstance(error, ContextWindowExceeded):
                overflow_window = model.context_window
                break
            if not is_retryable(error):
                raise error
            if isinstance(error, Overloaded) and not picker.untried_available(model, tried, inputs.workload):
                break  # shed load honestly: the client gets the 429 and its Retry-After now
            if attempt_no < model.retry.max_attempts and not picker.untried_available(model, tried, inputs.workload):
                # Backing off protects a struggling deployment; moving to a fresh one needs no wait.
                yield Pause(min(backoff_s(model.retry, attempt_no, error, rng), max(0.0, inputs.deadline - clock())))
    raise last or NotReady(inputs.exhausted)
