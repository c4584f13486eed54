"""A llama.cpp worker process: one model, one request at a time.

Run as ``python -m modelyard.backends.llama_worker --model-file F --n-ctx N --threads T``.
It speaks JSON lines: requests on stdin, events on stdout. The C library's own
printing goes to stderr so it can never corrupt the protocol.

    in:  {"op": "generate", "id": ..., "call": ModelCall wire form}
         {"op": "cancel", "id": ...}        stop after the current token
         {"op": "ping"}                      answered even mid-generation
    out: {"ev": "ready", "n_ctx": ..., "chat": bool}
         {"ev": "chunk", "id": ..., "text": ..., "logprobs": [...]}
         {"ev": "done", "id": ..., "finish_reason": ..., "usage": {...}}
         {"ev": "error", "id": ..., "kind": "context_window"|"invalid"|"internal", "message": ...}
         {"ev": "pong"}
         {"ev": "fatal", "message": ...}    could not load the model; exits

When stdin closes (the supervisor died) the worker exits, so no orphan
outlives its parent.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import queue
import random
import sys
import threading
import traceback
from typing import IO, Any, Callable

from modelyard.backends.tool_calls import messages_for_template
from modelyard.protocol import ModelCall

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05


class CallRejected(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Channel:
    """Thread-safe JSON-lines writer over the protocol fd."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


class StopMatcher:
    """Holds back text that could begin a stop string; reports when one matches."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.pending[: min(hits)]
            self.pending = ""
            return out, True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class LogprobRecorder:
    """A logits processor that keeps the last raw distribution to score the sampled token."""

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.last = scores.copy()
        return scores

    def score(self, token: int, piece: Callable[[int], str]) -> dict[str, Any]:
        import numpy as np

        logits = self.last.astype(np.float64)
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        top: list[list[Any]] = []
        if self.top_n:
            idx = np.argpartition(-logprobs, self.top_n)[: self.top_n]
            idx = idx[np.argsort(-logprobs[idx])]
            top = [[piece(int(i)), float(logprobs[i])] for i in idx]
        return {"token": piece(token), "logprob": float(logprobs[token]), "top": top}


class EndBlocker:
    """A logits processor that never lets generation end (``ignore_eos``): end-of-generation tokens get -inf."""

    def __init__(self, end_tokens: list[int]) -> None:
        self.end_tokens = end_tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores[self.end_tokens] = -float("inf")
        return scores


class Worker:
    def __init__(self, model_file: str, n_ctx: int, threads: int, channel: Channel) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = Llama(model_file, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.n_ctx = n_ctx
        self.channel = channel
        self.grammars: dict[str, Any] = {}
        self.end_tokens: list[int] | None = None  # end-of-generation token ids, found on the first ignore_eos request
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.formatter = None
        if template:
            vocab = self.llm._model
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self.llm.detokenize([vocab.token_eos()], special=True).decode("utf-8", "ignore"),
                bos_token=self.llm.detokenize([vocab.token_bos()], special=True).decode("utf-8", "ignore"),
                stop_token_ids=[vocab.token_eos()],
            )

    # -- prompt -----------------------------------------------------------------
    def prompt_tokens(self, call: ModelCall) -> tuple[list[int], tuple[str, ...]]:
        if call.kind == "completion":
            return self.llm.tokenize(call.prompt.encode("utf-8"), add_bos=True, special=False), ()
        if self.formatter is None:
            raise CallRejected("invalid", "this model has no chat template; use /v1/completions")
        result = self.formatter(messages=messages_for_template(call.messages), tools=list(call.tools) or None, tool_choice=call.tool_choice)  # type: ignore[arg-type]
        tokens = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        extra = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return tokens, tuple(extra)

    def grammar(self, response_format: dict[str, Any] | None) -> Any:
        if not response_format or response_format.get("type") == "text":
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            key = json.dumps(schema, sort_keys=True)
        else:
            key = ""
        if key not in self.grammars:
            try:
                self.grammars[key] = (
                    LlamaGrammar.from_json_schema(key, verbose=False)
                    if key
                    else LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                )
            except Exception as exc:  # the converter raises plain exceptions on unsupported schemas
                raise CallRejected("invalid", f"unsupported JSON schema: {exc}") from None
        return self.grammars[key]

    # -- generation -------------------------------------------------------------
    def run(self, request_id: str, call: ModelCall, cancelled: threading.Event) -> None:
        tokens, template_stops = self.prompt_tokens(call)
        n_prompt = len(tokens)
        room = self.n_ctx - n_prompt
        wanted = call.sampling.max_tokens
        if room <= 0 or (wanted is not None and wanted > room):
            raise CallRejected(
                "context_window",
                f"this model's context window is {self.n_ctx} tokens; the prompt has {n_prompt}"
                + (f" and max_tokens asks for {wanted}" if wanted is not None else ""),
            )
        limit = wanted if wanted is not None else room
        s = call.sampling
        if s.seed is not None:
            # A reused KV-cache prefix changes logits in the last bits; a seeded
            # request re-evaluates its prompt so the same seed gives the same text.
            self.llm.reset()
        self.llm.set_seed(s.seed if s.seed is not None else random.randrange(2**31))
        recorder = LogprobRecorder(s.top_logprobs) if s.logprobs else None
        from llama_cpp import llama_cpp as C

        stops = StopMatcher(s.stop + template_stops)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        generated: list[int] = []
        finish = "length"
        for token in self.llm.generate(
            tokens,
            temp=s.temperature if s.temperature is not None else DEFAULT_TEMPERATURE,
            top_p=s.top_p if s.top_p is not None else DEFAULT_TOP_P,
            min_p=DEFAULT_MIN_P,
            repeat_penalty=1.0,
            grammar=self.grammar(call.response_format),
            logits_processor=self._processors(s.ignore_eos, recorder),
        ):
            if C.llama_vocab_is_eog(self.llm._model.vocab, token):
                finish = "stop"
                break
            generated.append(token)
            piece = self.llm.detokenize([token], prev_tokens=tokens + generated[:-1])
            text, hit = stops.feed(decoder.decode(piece))
            event: dict[str, Any] = {"ev": "chunk", "id": request_id, "text": text}
            if recorder is not None:
                event["logprobs"] = [recorder.score(token, self._piece)]
            if text or recorder is not None:
                self.channel.send(event)
            if hit:
                finish = "stop"
                break
            if cancelled.is_set():
                finish = "cancelled"
                break
            if len(generated) >= limit:
                break
        tail = stops.flush() if finish != "stop" else ""
        tail += decoder.decode(b"", final=True) if finish != "stop" else ""
        if tail:
            self.channel.send({"ev": "chunk", "id": request_id, "text": tail})
        self.channel.send(
            {
                "ev": "done",
                "id": request_id,
                "finish_reason": finish,
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(generated)},
            }
        )

    def _processors(self, ignore_eos: bool, recorder: LogprobRecorder | None) -> Any:
        from llama_cpp import LogitsProcessorList
        from llama_cpp import llama_cpp as C

        processors: list[Any] = []
        if ignore_eos:
            if self.end_tokens is None:  # a scan of the whole vocabulary: once per worker
                vocab = self.llm._model.vocab
                self.end_tokens = [t for t in range(self.llm.n_vocab()) if C.llama_vocab_is_eog(vocab, t)]
            processors.append(EndBlocker(self.end_tokens))
        if recorder is not None:
            processors.append(recorder)  # after the blocker: logprobs are of what could be sampled
        return LogitsProcessorList(processors) if processors else None

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")


def read_requests(stdin: IO[str], jobs: queue.Queue[Any], cancels: dict[str, threading.Event], channel: Channel) -> None:
    for line in stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        op = msg.get("op")
        if op == "ping":
            channel.send({"ev": "pong"})
        elif op == "cancel":
            event = cancels.get(msg.get("id", ""))
            if event is not None:
                event.set()
        elif op == "generate":
            cancels[msg["id"]] = threading.Event()
            jobs.put(msg)
    os._exit(0)  # parent gone: never outlive it


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="modelyard llama.cpp worker (speaks JSON lines on stdio)")
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything the C library prints lands on stderr
    sys.stdout = sys.stderr
    channel = Channel(protocol_out)
    try:
        worker = Worker(args.model_file, args.n_ctx, args.threads, channel)
    except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
        message = f"cannot load {args.model_file}: {exc}"
        print(f"modelyard worker: {message}", file=sys.stderr)
        channel.send({"ev": "fatal", "message": message})
        sys.exit(3)
    channel.send({"ev": "ready", "n_ctx": worker.n_ctx, "chat": worker.formatter is not None})

    jobs: queue.Queue[Any] = queue.Queue()
    cancels: dict[str, threading.Event] = {}
    threading.Thread(target=read_requests, args=(sys.stdin, jobs, cancels, channel), daemon=True).start()
    while True:
        msg = jobs.get()
        request_id = msg["id"]
        try:
            worker.run(request_id, ModelCall.from_wire(msg["call"]), cancels[request_id])
        except CallRejected as exc:
            channel.send({"ev": "error", "id": request_id, "kind": exc.kind, "message": str(exc)})
        except Exception as exc:  # report, stay alive for the next request
            traceback.print_exc()
            channel.send({"ev": "error", "id": request_id, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            cancels.pop(request_id, None)


if __name__ == "__main__":
    main()
