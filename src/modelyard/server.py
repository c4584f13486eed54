"""The composition root: build the fleet, the pipeline and the app; run uvicorn."""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import signal
import sys
from pathlib import Path

import uvicorn
import uvloop

from modelyard.api.app import create_app
from modelyard.api.auth import Keyring
from modelyard.config import FleetConfig
from modelyard.economics.budget import BudgetBook
from modelyard.fleet import artifacts
from modelyard.observe.access_log import AccessLog, stream_writer
from modelyard.observe.span_sinks import OtlpHttpSink
from modelyard.observe.tracing import Tracing, TracingOptions
from modelyard.pipeline.budget import LocalBudgets, SharedBudgets
from modelyard.pipeline.dispatch import Dispatcher
from modelyard.pipeline.fleet import FleetRuntime
from modelyard.pipeline.limits import LocalLimiter, SharedLimiter
from modelyard.pipeline.route_inputs import RouterFileError, load_learned
from modelyard.pipeline.shared_breakers import SharedBreakers
from modelyard.pipeline.stages import build_pipeline
from modelyard.store.accounts import Accounts
from modelyard.store.database import StoreUnavailable
from modelyard.store.ledger import DatabaseLedger, LedgerWriter
from modelyard.store.migrations import SchemaTooNew
from modelyard.store.redis_breakers import RedisBreakers
from modelyard.store.redis_budgets import RedisBudgets
from modelyard.store.redis_client import SharedStateUnavailable, connect_redis
from modelyard.store.redis_limits import RedisWindows
from modelyard.store.store import open_store

log = logging.getLogger("modelyard")
MASTER_KEY_ENV = "MODELYARD_MASTER_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Each request allocates a few thousand short-lived objects; at CPython's default
# threshold (700) that is several young-generation collections per request, each
# also walking whatever the last one promoted (bench/profile_gateway.py showed
# them spread over every hot line). A larger threshold runs them ~70x less often.
GC_GEN0_THRESHOLD = 50_000


def data_dir_of(config: FleetConfig, override: str | None) -> Path:
    return Path(override or config.server.data_dir).expanduser()


def prepare_artifacts(config: FleetConfig, data_dir: Path) -> list[tuple[str, Path]]:
    """Resolve (assemble, verify) every model file now, so a bad one fails before serving."""
    return artifacts.prepare(config, data_dir / "models")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve_fleet(
    config: FleetConfig, host: str, port: int, data_dir: Path, log_level: str = "info", database_url: str | None = None, redis_url: str | None = None,
    tracing: TracingOptions | None = None,
) -> int:
    """Start the fleet, serve until SIGINT/SIGTERM, then stop the fleet.

    The fleet starts before the port opens, so a startup failure is one clear
    line and exit code 3. On SIGTERM uvicorn stops accepting, in-flight
    requests get ``server.grace_period_s``, then every worker is stopped.
    """
    master_key = os.environ.get(MASTER_KEY_ENV) or None
    if master_key is None:
        if host not in LOOPBACK:
            log.error("cannot start: without %s modelyard only listens on loopback (asked for %s)", MASTER_KEY_ENV, host)
            return 2
        log.warning("%s is not set: running open (no API keys) on %s only", MASTER_KEY_ENV, host)
    try:
        learned = load_learned(config)  # read before the models load: a bad router file fails in a second
        shared = await connect_redis(redis_url) if redis_url else None
        store = await open_store(data_dir, database_url)  # migrated before the models load: a schema problem fails in a second
    except (RouterFileError, SharedStateUnavailable, StoreUnavailable, SchemaTooNew) as exc:
        log.error("cannot start: %s", exc)
        return 3
    limiter = SharedLimiter(RedisWindows(shared)) if shared is not None else LocalLimiter()
    fleet = FleetRuntime(config, data_dir)
    log.info("starting %d deployment(s) from %s", len(fleet.deployments), config.source)
    try:
        await fleet.start()
    except Exception as exc:  # every startup failure is reported the same way, without a traceback
        log.debug("startup failure", exc_info=True)
        log.error("cannot start: %s", exc)
        await store.aclose()
        return 3
    dispatcher = Dispatcher(fleet, config)
    dispatcher.start()
    shared_breakers = SharedBreakers(RedisBreakers(shared), dispatcher.picker.breakers) if shared is not None else None
    if shared_breakers is not None:
        shared_breakers.start()
    ledger = LedgerWriter(DatabaseLedger(store.db))
    await ledger.start()
    book = BudgetBook()
    budgets = LocalBudgets(book) if shared is None else SharedBudgets(RedisBudgets(shared, _hold_ttl_s(config)), book)
    keyring = Keyring(Accounts(store.db), master_key, book, ledger.sink.spend_by_owner)
    if isinstance(budgets, SharedBudgets):
        budgets.reload = keyring.load_spend  # after Redis restarts empty: everyone's spend from the shared ledger
    await keyring.start()
    exporter, spans = None, None
    if tracing is not None:
        exporter = OtlpHttpSink(tracing.endpoint, {"service.name": tracing.service_name, "service.version": _version()}, _version())
        await exporter.start()
        spans = Tracing(exporter, config, tracing.capture_content, dispatcher.clock).observe
        log.info("traces go to %s over OTLP/HTTP%s", tracing.endpoint, " with prompts" if tracing.capture_content else "")
    pipeline = build_pipeline(dispatcher, config, learned, budgets, limiter=limiter, redis=shared)
    access_log = AccessLog(stream_writer(sys.stderr), config.server.access_log_flush_s)  # JSON lines on stderr, whatever the log level
    app = create_app(pipeline, fleet, dispatcher, config, store, ledger, keyring, spans, access_log)
    app.state.batches.start()  # resumes any job a previous run left unfinished
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=int(config.server.grace_period_s),
    )
    server = uvicorn.Server(uv_config)
    # uvicorn re-raises the signal it shut down for once it restores the previous
    # handlers; a no-op previous handler lets the fleet stop in order afterwards.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore_signal)
    try:
        log.info("fleet ready: %s", ", ".join(m.name for m in config.models))
        tune_gc()
        await server.serve()
    finally:
        log.info("stopping the fleet")
        await app.state.batches.aclose()
        if shared_breakers is not None:
            await shared_breakers.aclose()
        await dispatcher.aclose()
        await fleet.aclose()
        await ledger.aclose()  # after the last request: every row is written
        access_log.close()
        await keyring.aclose()
        await limiter.drain()  # the last settles and commits reach Redis before it is closed
        await budgets.drain()
        if shared is not None:
            await shared.aclose()
        if exporter is not None:
            await exporter.aclose()  # exports the spans still batched
        await store.aclose()
    return 0 if server.started else 3


def tune_gc(gen0_threshold: int = GC_GEN0_THRESHOLD) -> None:
    """Move what startup allocated (models, config, routes) out of the collector's sight and collect the young generation less often."""
    gc.collect()
    gc.freeze()  # long-lived startup objects are never scanned again
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(gen0_threshold, older, oldest)


def _version() -> str:
    try:
        return importlib.metadata.version("modelyard")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _hold_ttl_s(config: FleetConfig) -> float:
    """A budget hold outlives the longest a request may run, so a replica that dies does not keep it."""
    return config.server.max_request_timeout_s + config.server.grace_period_s


def _ignore_signal(signum: int, frame: object) -> None:
    log.debug("signal %d during shutdown ignored", signum)


def run(
    config: FleetConfig, host: str, port: int, data_dir: Path, log_level: str = "info", database_url: str | None = None, redis_url: str | None = None,
    tracing: TracingOptions | None = None,
) -> int:
    """Blocking entry point used by ``modelyard serve``."""
    return uvloop.run(serve_fleet(config, host, port, data_dir, log_level, database_url, redis_url, tracing))
