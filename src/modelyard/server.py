"""The composition root: build the fleet, the pipeline and the app; run uvicorn."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from modelyard.api.app import create_app
from modelyard.config import FleetConfig
from modelyard.fleet import artifacts
from modelyard.pipeline.fleet import FleetRuntime
from modelyard.pipeline.stages import build_pipeline

log = logging.getLogger("modelyard")


def data_dir_of(config: FleetConfig, override: str | None) -> Path:
    return Path(override or config.server.data_dir).expanduser()


def prepare_artifacts(config: FleetConfig, data_dir: Path) -> list[tuple[str, Path]]:
    """Resolve (assemble, verify) every model file now, so a bad one fails before serving."""
    resolved = []
    for model in config.models:
        for d in model.deployments:
            reference = d.options.get("model_file") or d.options.get("model_path")
            if isinstance(reference, str):
                resolved.append((d.name, artifacts.resolve(reference, data_dir / "models")))
    return resolved


def build_app(config: FleetConfig, data_dir: Path) -> Starlette:
    """The ASGI app; the fleet starts and stops with the app's lifespan."""
    fleet = FleetRuntime(config, data_dir)
    handler = build_pipeline(fleet, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("starting %d deployment(s) from %s", len(fleet.deployments), config.source)
        await fleet.start()
        log.info("fleet ready: %s", ", ".join(m.name for m in config.models))
        try:
            yield
        finally:
            log.info("stopping the fleet")
            await fleet.aclose()

    return create_app(handler, fleet, config, lifespan=lifespan)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("modelyard.access")
    access.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)


def run(config: FleetConfig, host: str, port: int, data_dir: Path, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get the configured grace period."""
    app = build_app(config, data_dir)
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=int(config.server.grace_period_s),
    )
    server = uvicorn.Server(uv_config)
    server.run()
    if not server.started:
        raise SystemExit(3)
