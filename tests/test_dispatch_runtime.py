"""The dispatcher runs on any fleet that answers the runtime protocol: here a scripted one in memory."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from modelyard.backends.base import Backend
from modelyard.config import parse_config
from modelyard.errors import ModelyardError, UpstreamError
from modelyard.pipeline.dispatch import Dispatcher
from modelyard.pipeline.runtime import Runtime
from modelyard.pipeline.types import Request
from modelyard.protocol import Chunk, ModelCall, Sampling, Usage


class ScriptedRuntime:
    """Deployments that answer from a script (an error, or the words of a text): no processes, no HTTP."""

    def __init__(self, scripts: dict[str, ModelyardError | str]) -> None:
        self.scripts = scripts
        self.outstanding = dict.fromkeys(scripts, 0)
        self.calls: list[str] = []

    def is_ready(self, deployment: str) -> bool:
        return True

    async def generate(self, deployment: str, call: ModelCall) -> AsyncGenerator[Chunk, None]:
        self.calls.append(deployment)
        self.outstanding[deployment] += 1
        try:
            script = self.scripts[deployment]
            if isinstance(script, ModelyardError):
                raise script
            for word in script.split():
                yield Chunk(text=word + " ")
            yield Chunk(finish_reason="stop", usage=Usage(3, len(script.split())))
        finally:
            self.outstanding[deployment] -= 1

    def backend(self, deployment: str) -> Backend | None:
        return None


CONFIG = {"models": {"m": {"kind": "chat", "deployments": [{"name": "a", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                                                          {"name": "b", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}}}


async def test_the_dispatcher_fails_over_on_a_scripted_runtime() -> None:
    config = parse_config(CONFIG)
    names = [d.name for d in config.models[0].deployments]
    runtime = ScriptedRuntime({names[0]: UpstreamError("a is down"), names[1]: "hello from b"})
    fleet: Runtime = runtime  # the protocol is all the dispatcher asks for
    dispatcher = Dispatcher(fleet, config)
    call = ModelCall(kind="chat", model="m", sampling=Sampling(max_tokens=8), messages=({"role": "user", "content": "hi"},))
    request = Request(operation="chat", model="m", request_id="r1", call=call)
    chunks = [chunk async for chunk in dispatcher.stream(request, call, ["m"])]
    assert "".join(c.text for c in chunks).split() == ["hello", "from", "b"]
    assert runtime.calls == names and [a.outcome for a in request.attempts] == ["upstream_error", "ok"]
    assert runtime.outstanding == dict.fromkeys(names, 0)  # each stream closed when its answer ended
    await dispatcher.aclose()
