"""Local engines as Ray Serve deployments: llama.cpp's server in each replica, autoscaled by Serve.

``modelyard ray deploy`` puts every local chat model of a fleet file on a Ray
cluster as one Serve application per model (route prefix ``/<model>``). Each
Serve replica is one Ray actor that runs llama.cpp's own server in-process
(the same engine and settings as ``backend: llamacpp_server``) and relays
HTTP to it, streaming. Serve places replicas on whatever nodes have CPUs,
scales them on ongoing requests (``num_replicas="auto"``), and restarts a
replica whose actor dies or whose engine stops answering ``/health``.

The gateway stays in front: its replicas reach the engines through Serve's
HTTP proxy as ordinary ``openai`` deployments
(``base_url: http://<serve-host>:<port>/<model>/v1``), so scheduling, routing,
limits and accounting are modelyard's, and Serve only places and scales
engines.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

ENGINE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # idle llama.cpp threads sleep: Ray's own processes share these cores


@dataclass(frozen=True, slots=True)
class RayEngineSpec:
    """One model's engine on Ray Serve and how Serve scales it."""

    model: str
    model_file: str
    parallel: int = 4
    n_ctx: int = 2048
    threads: int = 1
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 2.0  # per replica, averaged over the look-back
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    look_back_period_s: float = 5.0

    def autoscaling(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas, "max_replicas": self.max_replicas, "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s, "metrics_interval_s": 1.0,
        }


class LlamaServerReplica:
    """One Serve replica: llama.cpp's server on loopback inside this actor, and a streaming relay to it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import httpx
        import xllamacpp

        from modelyard.backends.llama_server_launcher import build_params, parse_args

        self.spec = RayEngineSpec(**spec)
        args = parse_args([
            "--model-file", self.spec.model_file, "--parallel", str(self.spec.parallel),
            "--n-ctx", str(self.spec.n_ctx), "--threads", str(self.spec.threads), "--verbosity", "0",
        ])
        self.server = xllamacpp.Server(build_params(args))
        self.base_url = str(self.server.listening_address).rstrip("/")
        # llama.cpp's server drops idle kept-alive connections: a fresh one per request (as the llamacpp_server backend does)
        self.client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_keepalive_connections=0))

    async def __call__(self, request: Any) -> Any:
        from starlette.background import BackgroundTask
        from starlette.responses import StreamingResponse

        path = request.url.path
        prefix = f"/{self.spec.model}"
        if path.startswith(prefix + "/"):
            path = path[len(prefix):]
        upstream = self.client.build_request(
            request.method, self.base_url + path, params=request.query_params, content=await request.body(),
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        response = await self.client.send(upstream, stream=True)
        return StreamingResponse(
            response.aiter_raw(), status_code=response.status_code, media_type=response.headers.get("content-type"),
            background=BackgroundTask(response.aclose),
        )

    def check_health(self) -> None:
        """Serve calls this every few seconds; raising makes it replace the replica."""
        import urllib.request

        with urllib.request.urlopen(self.base_url + "/health", timeout=10) as answer:
            if answer.status != 200:
                raise RuntimeError(f"llama.cpp's server answered /health with {answer.status}")


def engine_application(spec: RayEngineSpec) -> Any:
    """The Serve application for one model's engine."""
    from ray import serve

    deployment = serve.deployment(
        name=f"engine-{spec.model}",
        num_replicas="auto",
        autoscaling_config=spec.autoscaling(),
        max_ongoing_requests=spec.parallel * 2,  # beyond the slots requests wait in the engine, not in Serve's queue
        ray_actor_options={"num_cpus": spec.threads, "runtime_env": {"env_vars": ENGINE_ENV}},
        health_check_period_s=2.0,
        health_check_timeout_s=15.0,
    )(LlamaServerReplica)
    return deployment.bind(asdict(spec))


def deploy(specs: list[RayEngineSpec], address: str, http_host: str, http_port: int) -> dict[str, str]:
    """Deploy (or update) every engine on the cluster at ``address``; each model's OpenAI base URL."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, log_to_driver=False, namespace="modelyard")
    serve.start(http_options={"host": http_host, "port": http_port})
    urls = {}
    for spec in specs:
        serve.run(engine_application(spec), name=spec.model, route_prefix=f"/{spec.model}", blocking=False)
        urls[spec.model] = f"http://{http_host}:{http_port}/{spec.model}/v1"
    return urls


def replica_counts(address: str) -> dict[str, dict[str, int]]:
    """Replicas per model's engine, by state (RUNNING, STARTING, STOPPING...)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, namespace="modelyard")
    counts: dict[str, dict[str, int]] = {}
    for name, app in serve.status().applications.items():
        for deployment in app.deployments.values():
            counts[name] = {str(state): int(n) for state, n in deployment.replica_states.items()}
    return counts


def kill_one_replica(address: str, model: str) -> str:
    """Kill one of a model's engine replicas (its Ray actor) without warning, as a node loss would; its name.

    For failure drills and tests: Serve notices the dead actor and starts a new replica.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, namespace="modelyard")
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{model}#"):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            return str(actor["name"])
    raise LookupError(f"no running replica of {model}")
