"""One contract, every adapter: the same tests run against each backend.

Generative adapters: llamacpp (real SmolLM2 in a worker process),
llamacpp_server (real SmolLM2 in llama.cpp's own server) and openai (a real
fake upstream over HTTP). Embedding adapters: sentence-transformers (real
MiniLM on ONNX Runtime fp32 and int8 and on PyTorch) and openai embeddings.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from modelyard.backends.base import Backend, BackendContext
from modelyard.backends.registry import BACKENDS, backend_factory
from modelyard.config import parse_config
from modelyard.errors import InvalidRequest, ModelyardError, Overloaded, UpstreamError, UpstreamTimeout
from modelyard.protocol import Chunk, ModelCall, Sampling
from modelyard.testing.fake_upstream import WORDS

from .conftest import LiveServer

MODELS_DIR = Path("~/.cache/modelyard/models").expanduser()


def build(model: str, kind: str, deployment: dict[str, object]) -> Backend:
    config = parse_config({"models": {model: {"kind": kind, "deployments": [deployment]}}})
    m = config.models[0]
    return backend_factory(m.deployments[0].backend)(m.deployments[0], m, BackendContext(models_dir=MODELS_DIR, threads_per_worker=2))


LEGACY_INSTALLED = importlib.util.find_spec("llama_cpp") is not None  # `make install-legacy`

GENERATIVE: dict[str, Callable[[str], Backend]] = {
    "llamacpp_server": lambda _url: build(
        "smollm2-135m", "chat", {"backend": "llamacpp_server", "model_file": "builtin:smollm2-135m", "n_ctx": 1024, "parallel": 2}
    ),
    "openai": lambda url: build("fake", "chat", {"backend": "openai", "base_url": url + "/v1"}),
}
if LEGACY_INSTALLED:
    GENERATIVE["llamacpp"] = lambda _url: build("smollm2-135m", "chat", {"backend": "llamacpp", "model_file": "builtin:smollm2-135m", "n_ctx": 1024})
EMBEDDING: dict[str, Callable[[str], Backend]] = {
    "sentence-transformers": lambda _url: build("minilm", "embedding", {"backend": "sentence-transformers", "model_path": "builtin:all-minilm-l6-v2"}),
    "sentence-transformers[onnx-int8]": lambda _url: build(
        "minilm", "embedding", {"backend": "sentence-transformers", "model_path": "builtin:all-minilm-l6-v2", "runtime": "onnx-int8"}
    ),
    "sentence-transformers[torch]": lambda _url: build(
        "minilm", "embedding", {"backend": "sentence-transformers", "model_path": "builtin:all-minilm-l6-v2", "runtime": "torch"}
    ),
    "openai": lambda url: build("fake-embed", "embedding", {"backend": "openai", "base_url": url + "/v1"}),
}


def test_every_registered_adapter_is_under_contract() -> None:
    # `llamacpp` (llama-cpp-python, an optional extra) is under contract where it is installed.
    # A name with [runtime] is the same adapter under another of its runtimes.
    assert set(BACKENDS) == set(GENERATIVE) | {name.split("[")[0] for name in EMBEDDING} | ({"llamacpp"} if not LEGACY_INSTALLED else set())


@pytest.mark.skipif(LEGACY_INSTALLED, reason="llama-cpp-python is installed: the contract tests cover the backend instead")
async def test_the_legacy_backend_without_its_extra_fails_start_with_the_fix() -> None:
    backend = build("smollm2-135m", "chat", {"backend": "llamacpp", "model_file": "builtin:smollm2-135m"})
    with pytest.raises(RuntimeError) as info:
        await backend.start()
    assert "make install-legacy" in str(info.value)


@contextlib.asynccontextmanager
async def started(backend: Backend) -> AsyncIterator[Backend]:
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()


async def drain(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def chat_call(max_tokens: int = 8, **kw: object) -> ModelCall:
    return ModelCall(kind="chat", model="m", sampling=Sampling(max_tokens=max_tokens, temperature=0.0), messages=({"role": "user", "content": "Count: one, two,"},), **kw)  # type: ignore[arg-type]


@pytest.fixture(params=sorted(GENERATIVE))
def generative(request: pytest.FixtureRequest, fake_upstream: LiveServer) -> Iterator[Backend]:
    yield GENERATIVE[request.param](fake_upstream.url)


@pytest.fixture(params=sorted(EMBEDDING))
def embedding(request: pytest.FixtureRequest, fake_upstream: LiveServer) -> Iterator[Backend]:
    yield EMBEDDING[request.param](fake_upstream.url)


async def test_generate_streams_text_then_one_final_chunk(generative: Backend) -> None:
    async with started(generative) as backend:
        assert backend.health().ready
        chunks = await drain(backend.generate(chat_call(max_tokens=6)))
        finals = [c for c in chunks if c.finish_reason is not None]
        assert len(finals) == 1 and chunks[-1] is finals[0]
        assert "".join(c.text for c in chunks).strip()
        usage = finals[0].usage
        assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 6
        assert finals[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_a_whole_answer_reads_as_the_streamed_one(generative: Backend, kind: str) -> None:
    """``ModelCall.whole`` (the client does not stream): the same greedy answer, finish and usage, however it is fetched."""
    def call(whole: bool) -> ModelCall:
        sampling = Sampling(max_tokens=8, temperature=0.0, logprobs=True)
        if kind == "chat":
            return ModelCall(kind="chat", model="m", sampling=sampling, messages=({"role": "user", "content": "Count: one, two,"},), whole=whole)
        return ModelCall(kind="completion", model="m", sampling=sampling, prompt="One, two, three,", whole=whole)

    async with started(generative) as backend:
        answers = []
        for whole in (False, True):
            chunks = await drain(backend.generate(call(whole)))
            assert [c.finish_reason is not None for c in chunks].count(True) == 1 and chunks[-1].finish_reason is not None
            answers.append(("".join(c.text for c in chunks), chunks[-1].finish_reason, chunks[-1].usage,
                            [lp.token for c in chunks for lp in c.logprobs]))
        streamed, whole_answer = answers
        assert streamed[0].strip() and whole_answer == streamed


async def test_completion_kind(generative: Backend) -> None:
    async with started(generative) as backend:
        call = ModelCall(kind="completion", model="m", sampling=Sampling(max_tokens=4, temperature=0.0), prompt="The sky is")
        chunks = await drain(backend.generate(call))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 4


async def test_abandoned_stream_frees_capacity(generative: Backend) -> None:
    async with started(generative) as backend:
        stream = backend.generate(chat_call(max_tokens=200))
        first = await stream.__anext__()
        assert first.finish_reason is None
        await stream.aclose()  # what a client disconnect does
        chunks = await drain(backend.generate(chat_call(max_tokens=3)))  # must not wait for the 200 tokens
        assert chunks[-1].finish_reason is not None


async def test_tools_are_refused_exactly_when_the_capabilities_say_so(generative: Backend) -> None:
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    async with started(generative) as backend:
        stream = backend.generate(chat_call(max_tokens=3, tools=(tool,)))
        if backend.capabilities.tools:
            assert (await drain(stream))[-1].finish_reason is not None
        else:
            with pytest.raises(InvalidRequest) as info:
                await drain(stream)
            assert info.value.param == "tools"


async def test_generative_adapter_rejects_embeddings(generative: Backend) -> None:
    async with started(generative) as backend:
        with pytest.raises(ModelyardError):
            await backend.embed(["x"])


async def test_embed_returns_vectors_in_order(embedding: Backend) -> None:
    async with started(embedding) as backend:
        assert backend.health().ready
        result = await backend.embed(["first text", "a second, longer text here", "3"])
        assert len(result.vectors) == 3
        assert len({len(v) for v in result.vectors}) == 1
        assert result.prompt_tokens > 0
        again = await backend.embed(["a second, longer text here"])
        assert again.vectors[0] == pytest.approx(result.vectors[1], abs=1e-5)


async def test_embedding_adapter_rejects_generation(embedding: Backend) -> None:
    async with started(embedding) as backend:
        with pytest.raises(ModelyardError):
            await drain(backend.generate(chat_call()))


# -- adapter-specific failure translation ------------------------------------------------

def fake_with(url: str, **headers: str) -> Backend:
    return build("fake", "chat", {"backend": "openai", "base_url": url + "/v1", "headers": headers, "timeouts": {"first_token_s": 0.5, "total_s": 0.5}})


@pytest.mark.parametrize(
    ("headers", "error", "status"),
    [
        ({"x-fake-status": "500"}, UpstreamError, 502),
        ({"x-fake-status": "503"}, UpstreamError, 502),
        ({"x-fake-status": "429", "x-fake-retry-after": "7"}, Overloaded, 429),
        ({"x-fake-status": "400"}, InvalidRequest, 400),
        ({"x-fake-latency-ms": "2000"}, UpstreamTimeout, 504),
    ],
)
@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "whole"])
async def test_openai_adapter_translates_failures(
    fake_upstream: LiveServer, headers: dict[str, str], error: type[ModelyardError], status: int, whole: bool
) -> None:
    async with started(fake_with(fake_upstream.url, **headers)) as backend:
        with pytest.raises(error) as info:
            await drain(backend.generate(chat_call(whole=whole)))
        assert info.value.status == status
        if error is Overloaded:
            assert info.value.retry_after == 7


async def test_openai_adapter_connection_refused() -> None:
    async with started(build("fake", "chat", {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"})) as backend:
        with pytest.raises(UpstreamError):
            await drain(backend.generate(chat_call()))


async def test_openai_adapter_broken_stream_is_an_error(fake_upstream: LiveServer) -> None:
    async with started(fake_with(fake_upstream.url, **{"x-fake-fail-after": "2"})) as backend:
        chunks: list[Chunk] = []
        with pytest.raises(UpstreamError):
            async for chunk in backend.generate(chat_call(max_tokens=10)):
                chunks.append(chunk)
        # The two tokens sent before the break arrive (joined into one chunk when they came in one read), and no finish.
        assert chunks and all(c.finish_reason is None for c in chunks)
        assert "".join(c.text for c in chunks) == f"{WORDS[0]} {WORDS[1]}"


@pytest.mark.parametrize(("headers", "problem"), [({"x-fake-fail-after": "2"}, "ServerDisconnected|ClientPayloadError|closed"),
                                                 ({"x-fake-garbage": "1"}, "malformed answer"), ({"x-fake-content-type": "1"}, "not JSON")])
async def test_openai_adapter_broken_whole_answer_is_an_error(fake_upstream: LiveServer, headers: dict[str, str], problem: str) -> None:
    async with started(fake_with(fake_upstream.url, **headers)) as backend:
        chunks: list[Chunk] = []
        with pytest.raises(UpstreamError, match=problem):
            async for chunk in backend.generate(chat_call(max_tokens=10, whole=True)):
                chunks.append(chunk)
        assert chunks == []  # nothing of a broken answer gets through


@pytest.mark.parametrize("local_backend", ["llamacpp_server"] + (["llamacpp"] if LEGACY_INSTALLED else []))
async def test_local_context_window_is_a_400(local_backend: str) -> None:
    backend = build("smollm2-135m", "chat", {"backend": local_backend, "model_file": "builtin:smollm2-135m", "n_ctx": 256})
    async with started(backend):
        # llama.cpp's server shares one unified KV cache of parallel x n_ctx tokens among its slots.
        call = ModelCall(kind="chat", model="m", sampling=Sampling(max_tokens=10), messages=({"role": "user", "content": "word " * 1500},))
        with pytest.raises(InvalidRequest) as info:
            await drain(backend.generate(call))
        assert info.value.code == "context_length_exceeded"
        chunks = await drain(backend.generate(chat_call(max_tokens=2)))  # the worker is still usable
        assert chunks[-1].finish_reason is not None


@pytest.mark.parametrize("local_backend", ["llamacpp_server"] + (["llamacpp"] if LEGACY_INSTALLED else []))
async def test_local_ignore_eos_generates_exactly_max_tokens(local_backend: str) -> None:
    backend = build("smollm2-135m", "chat", {"backend": local_backend, "model_file": "builtin:smollm2-135m", "n_ctx": 512})
    async with started(backend):
        # A question SmolLM2 answers in a word or two: without ignore_eos it stops well before 48 tokens.
        question = ({"role": "user", "content": "Reply with one word: yes or no?"},)
        short = await drain(backend.generate(ModelCall(kind="chat", model="m", sampling=Sampling(max_tokens=48, temperature=0.0), messages=question)))
        full = await drain(backend.generate(ModelCall(kind="chat", model="m", sampling=Sampling(max_tokens=48, temperature=0.0, ignore_eos=True), messages=question)))
        assert short[-1].usage is not None and short[-1].usage.completion_tokens < 48
        assert full[-1].usage is not None and full[-1].usage.completion_tokens == 48 and full[-1].finish_reason == "length"
