"""The application factory: explicit dependencies in, a configured aiohttp app out."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from server import handlers
from server.config import ServerConfig
from server.errors import error_middleware
from server.inference import InferenceService, startup_timings
from server.metrics import Metrics
from server.openapi import openapi_handler
from server.runner import OnnxRunner, Runner, model_on_gpu, thread_layout, uses_cuda
from server.state import BATCHER, CONFIG, METRICS, RUNNER, SERVICE, STATE, ServerState

log = logging.getLogger("server.app")


def create_app(config: ServerConfig, runner: Runner | None = None, metrics: Metrics | None = None) -> web.Application:
    """`runner=None` loads an OnnxRunner from `config.model_dir` at start-up (tests pass a fake)."""
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[handlers.observe_middleware, error_middleware])
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics()
    app[STATE] = ServerState()
    if runner is not None:
        app[RUNNER] = runner
    app.cleanup_ctx.append(_model_ctx)
    app.router.add_post("/v1/predict", handlers.predict, name="predict")
    app.router.add_get("/v1/model", handlers.model_info, name="model")
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    app.router.add_get("/metrics", handlers.metrics, name="metrics")
    app.router.add_get("/openapi.json", openapi_handler, name="openapi")
    return app


def load_runner(config: ServerConfig) -> OnnxRunner:
    """The model directory's runner, with the cores split among the inference workers.

    The layout depends on the device, known for sure only once the session exists: where
    the CUDA provider is present but fails to start, ONNX Runtime falls back to the CPU, and
    the GPU's layout (one worker with every core) would meet the CPU's worker count. So a
    session that fell back is built again with the CPU's layout.
    """
    def build(gpu: bool) -> OnnxRunner:
        workers, intra = thread_layout(config.inference_workers, config.intra_op_threads, gpu)
        return OnnxRunner(config.model_dir, intra, config.inter_op_threads, config.truncate,
                          sessions=workers if intra > 1 else 1, shape_bucket=config.shape_bucket,
                          max_batch_size=config.max_batch_size)

    gpu = model_on_gpu(config.model_dir)
    runner = build(gpu)
    if gpu and not uses_cuda(runner.info.get("providers", ())):
        log.warning("model exported for a GPU, but ONNX Runtime's CUDA provider did not start: serving on CPU")
        runner = build(gpu=False)
    return runner


async def _model_ctx(app: web.Application):
    """Load (if not given) and warm up the model off the event loop, start the inference
    layer (seeded with the warm-up's batch timings); then ready. On cleanup, the reverse."""
    config, state, loop = app[CONFIG], app[STATE], asyncio.get_running_loop()
    if RUNNER not in app:
        app[RUNNER] = await loop.run_in_executor(None, lambda: load_runner(config))
    runner: Runner = app[RUNNER]
    await loop.run_in_executor(None, runner.warmup)
    timings = await loop.run_in_executor(None, startup_timings, runner)
    app[METRICS].set_model_info(runner.info)
    service = InferenceService(runner, config, app[METRICS], timings=timings)
    app[SERVICE] = service
    app[BATCHER] = service.batcher
    await service.start()
    log.info("model %s %s ready (%s)", runner.info["model_name"], runner.info["model_version"],
             runner.info.get("quantization"))
    state.ready = True
    yield
    state.ready = False
    await service.stop()


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
