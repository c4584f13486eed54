"""What flows through the pipeline: one Request in, one Response out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Literal

from modelyard.economics.keys import KeyPolicy
from modelyard.errors import ModelyardError
from modelyard.protocol import Chunk, Embeddings, ModelCall, Usage

Operation = Literal["chat", "completion", "embedding"]
WORKLOAD_CLASSES = ("interactive", "agent", "batch", "embedding", "background")


class Lifecycle(enum.IntEnum):
    """Where a request is; one ordered state instead of scattered booleans."""

    RECEIVED = 1
    CLASSIFIED = 2
    ROUTED = 3
    RUNNING = 4
    STREAMING = 5
    COMPLETED = 6
    FAILED = 7
    CANCELLED = 8


@dataclass(slots=True)
class Attempt:
    """One try of one call on one deployment; cost accounting sums them all."""

    model: str
    deployment: str
    started: float
    outcome: str = "pending"  # ok | <error type> | cancelled | hedge-lost
    error: str | None = None
    ttft_s: float | None = None
    usage: Usage | None = None
    busy_s: float = 0.0  # start to last chunk: the replica time this attempt held
    finish_reason: str | None = None  # an answered attempt: why its generation ended

    def fail(self, error: ModelyardError, now: float) -> None:
        self.outcome = error.error_type
        self.error = error.message
        self.finish(now)

    def finish(self, now: float) -> None:
        if not self.busy_s:
            self.busy_s = max(0.0, now - self.started)


@dataclass(slots=True)
class Request:
    """One client request as the pipeline sees it (no HTTP left in it)."""

    operation: Operation
    model: str
    request_id: str
    call: ModelCall | None = None
    inputs: list[str] = field(default_factory=list)
    n: int = 1
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    workload: str = "interactive"
    tenant: str = "default"
    policy: KeyPolicy | None = None  # None: the master key, or open mode
    ratelimit: dict[str, str] = field(default_factory=dict)  # x-ratelimit-* headers for the response
    session: str | None = None
    state: Lifecycle = Lifecycle.RECEIVED
    served_model: str | None = None
    deployment: str | None = None
    route_reason: str = ""
    route_kind: str = ""  # how an alias chose the model (RouteDecision.kind); empty when a model was named
    predicted_quality: float | None = None  # the learned router's prediction for the chosen model
    route_embedding: str = ""  # where an alias's prompt vector came from: embedded | kept, or settled (the words decided without one); empty: the alias needed none
    plan: list[str] = field(default_factory=list)  # the served model, then its fallbacks
    escalations: list[str] = field(default_factory=list)  # cascade targets not yet tried
    deadline: float = float("inf")  # on the dispatcher's clock (time.monotonic unless injected): when the request must be answered
    attempts: list[Attempt] = field(default_factory=list)
    overhead: list[Attempt] = field(default_factory=list)  # work for the request that is not an answer (routing embeddings): costed, not counted as attempts or tokens
    finalizers: list[Callable[[], None]] = field(default_factory=list)
    cache: str = ""  # what the response cache did: hit | miss | bypass (empty: no cache stage applied)
    saved_usd: float = 0.0  # a cache hit: what the cached answer cost when it was made
    response_headers: dict[str, str] = field(default_factory=dict)  # x-modelyard-* headers stages add to the response
    tool_calls_made: list[dict[str, Any]] = field(default_factory=list)  # a session's request: the tool calls the answer made
    session_stopped: str = ""  # a session budget refused this request: the reason and what was used

    def finish(self) -> None:
        """Run what stages left for the end (settle rate limits, commit budgets), once.

        Whoever owns the request's lifetime calls this when it is over, whatever
        happened: the API when the response has been sent (or the client left),
        the batch runner when a line is answered.
        """
        finalizers, self.finalizers = self.finalizers, []
        for finalize in finalizers:
            finalize()

    def usage(self) -> Usage:
        """Tokens of the attempts that answered."""
        total = Usage()
        for attempt in self.attempts:
            if attempt.outcome == "ok" and attempt.usage is not None:
                total = total + attempt.usage
        return total


@dataclass(slots=True)
class Response:
    """Generation streams (one per choice) or embeddings, plus who served them."""

    model: str
    deployment: str
    route_reason: str
    streams: list[AsyncIterator[Chunk]] = field(default_factory=list)
    embeddings: Embeddings | None = None


Handler = Callable[[Request], Awaitable[Response]]
Stage = Callable[[Handler], Handler]
