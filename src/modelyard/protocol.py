"""Plain data passed between layers: what a backend is asked, and what it yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CallKind = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class Sampling:
    """Decoding parameters of one generation."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False  # generate exactly max_tokens (vLLM's and llama-server's extension; for load tests)


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One generation request addressed to one backend model.

    ``messages`` is set for chat calls, ``prompt`` for plain completions.
    ``tools``/``tool_choice`` and ``response_format`` are OpenAI-shaped dicts.
    """

    kind: CallKind
    model: str
    sampling: Sampling = field(default_factory=Sampling)
    messages: tuple[dict[str, Any], ...] = ()
    prompt: str = ""
    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    user: str | None = None
    # Admitted as deferrable work (batch, background): an engine that orders its work by slot
    # (llama.cpp's server fills each step's prompt budget slot by slot) puts it behind urgent work.
    deferrable: bool = False
    # The caller reads nothing before the answer ends (its client did not ask to stream): a backend
    # may fetch the answer in one response instead of one event per token. Only the dispatcher sets it.
    whole: bool = False

    def to_wire(self) -> dict[str, Any]:
        """A JSON-serialisable form (for worker processes)."""
        return {
            "kind": self.kind,
            "model": self.model,
            "sampling": {
                "max_tokens": self.sampling.max_tokens,
                "temperature": self.sampling.temperature,
                "top_p": self.sampling.top_p,
                "stop": list(self.sampling.stop),
                "seed": self.sampling.seed,
                "logprobs": self.sampling.logprobs,
                "top_logprobs": self.sampling.top_logprobs,
                "ignore_eos": self.sampling.ignore_eos,
            },
            "messages": list(self.messages),
            "prompt": self.prompt,
            "response_format": self.response_format,
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "user": self.user,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ModelCall:
        s = data.get("sampling") or {}
        return cls(
            kind=data["kind"],
            model=data["model"],
            sampling=Sampling(
                max_tokens=s.get("max_tokens"),
                temperature=s.get("temperature"),
                top_p=s.get("top_p"),
                stop=tuple(s.get("stop") or ()),
                seed=s.get("seed"),
                logprobs=bool(s.get("logprobs")),
                top_logprobs=int(s.get("top_logprobs") or 0),
                ignore_eos=bool(s.get("ignore_eos")),
            ),
            messages=tuple(data.get("messages") or ()),
            prompt=data.get("prompt") or "",
            response_format=data.get("response_format"),
            tools=tuple(data.get("tools") or ()),
            tool_choice=data.get("tool_choice"),
            user=data.get("user"),
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as reported by the backend (or its tokenizer)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability and alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": list(self.token.encode("utf-8")),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
                for t, lp in self.top
            ],
        }


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a generation stream.

    A stream is zero or more chunks with ``text``/``tool_calls``, and one last
    chunk carrying ``finish_reason`` and ``usage``. A non-streaming response is
    the joined stream.
    """

    text: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Vectors for a list of inputs, in input order, with the tokens counted."""

    vectors: list[list[float]]
    prompt_tokens: int
    token_counts: list[int] | None = None  # per input, when the backend's tokenizer gives them


def merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Fold one streamed tool-call delta into the complete call it belongs to."""
    index = int(delta.get("index", 0))
    call = calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    fn = delta.get("function") or {}
    call["function"]["name"] += fn.get("name") or ""
    call["function"]["arguments"] += fn.get("arguments") or ""
