"""The application factory: explicit dependencies in, a configured aiohttp app out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from server import apidocs, handlers, playground
from server.auth import ApiKeys, auth_middleware
from server.config import ServerConfig
from server.cors import setup_cors
from server.encoder import Encoder
from server.errors import error_middleware
from server.inference import InferenceService, startup_curve
from server.metrics import Metrics
from server.model import ServedModel, load_model
from server.openapi import openapi_handler
from server.predlog import PredictionLog
from server.runner import Runner
from server.state import API_KEYS, BATCHER, CONFIG, METRICS, MODEL, PREDLOG, SERVICE, STATE, ServerState
from server.stats import stats_handler

log = logging.getLogger("server.app")


def create_app(
    config: ServerConfig, runner: Runner | None = None, metrics: Metrics | None = None, encoder: Encoder | None = None
) -> web.Application:
    """With no `runner`, the model directory `config.model_dir` is loaded at start-up; a given
    runner (a test's fake, or one loaded before the port opened) comes with its encoder."""
    if (runner is None) != (encoder is None):
        raise TypeError("create_app: give both runner and encoder, or neither")
    middlewares: list[Middleware] = [handlers.observe_middleware, error_middleware]
    keys = ApiKeys(config.api_key_file) if config.api_key_file is not None else None  # raises KeyFileError
    if keys is not None:
        middlewares.append(auth_middleware(keys))
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    if keys is not None:
        app[API_KEYS] = keys
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics()
    app[STATE] = ServerState()
    if runner is not None and encoder is not None:
        app[MODEL] = ServedModel(encoder, runner)
    app.cleanup_ctx.append(_model_ctx)
    app.router.add_post("/v1/predict", handlers.predict, name="predict")
    app.router.add_get("/v1/model", handlers.model_info, name="model")
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    app.router.add_get("/metrics", handlers.metrics, name="metrics")
    app.router.add_get("/openapi.json", openapi_handler, name="openapi")
    app.router.add_get("/v1/stats", stats_handler, name="stats")
    playground.add_routes(app)  # GET / and /static/{name}
    apidocs.add_routes(app)  # GET /docs and /docs/static/{name}
    if config.cors_allow_origin:
        setup_cors(app, config.cors_allow_origin)  # after every route
    return app


async def _model_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load (if not given) and warm up the model off the event loop, start the inference layer
    (its batch budget and cost model from the batches timed after warm-up); then ready. On
    cleanup, the reverse."""
    config, state, loop = app[CONFIG], app[STATE], asyncio.get_running_loop()
    if MODEL not in app:
        app[MODEL] = await loop.run_in_executor(None, lambda: load_model(config))
    encoder, runner = app[MODEL].encoder, app[MODEL].runner
    await loop.run_in_executor(None, runner.warmup)
    curve = await loop.run_in_executor(None, startup_curve, runner)
    app[METRICS].set_model_info(runner.info)
    app[METRICS].set_labels(tuple(runner.labels), runner.info.get("label_share"))
    predlog = PredictionLog.from_config(config, runner.info, app[METRICS])  # None without --prediction-log
    if predlog is not None:
        app[PREDLOG] = predlog
        predlog.start()
    service = InferenceService(encoder, runner, config, app[METRICS], curve=curve)
    app[SERVICE] = service
    app[BATCHER] = service.batcher
    await service.start()
    log.info(
        "model %s %s ready (%s)",
        runner.info["model_name"],
        runner.info["model_version"],
        runner.info.get("quantization"),
    )
    state.ready = True
    yield
    state.ready = False
    await service.stop()
    if predlog is not None:
        await loop.run_in_executor(None, predlog.close)  # what is still queued is written


def begin_drain(app: web.Application) -> None:
    """Readiness goes 503 and new predictions are refused; accepted ones carry on."""
    state = app[STATE]
    state.draining = True
    if state.inflight == 0:
        state.idle.set()
    else:
        state.idle.clear()


async def wait_drained(app: web.Application, timeout_s: float) -> bool:
    """True when every accepted prediction was answered within `timeout_s`."""
    state = app[STATE]
    if state.inflight == 0:
        return True
    try:
        await asyncio.wait_for(state.idle.wait(), timeout_s)
    except asyncio.TimeoutError:
        return state.inflight == 0
    return True
