"""`python -m server --model-dir DIR ...`: serve until SIGTERM/SIGINT, then drain and exit 0.

Shutdown order: readiness goes 503 and new predictions are refused (503 shutting_down),
every accepted request is answered, then the listener closes; all within --drain-timeout-s.
"""

from __future__ import annotations

import os

# Before `tokenizers` is imported: the tokenizer runs in one thread of ours; its own
# thread pool would fight ONNX Runtime for the same cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import asyncio
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Sequence

import orjson
from aiohttp import web

from core.layout import model_on_gpu, process_layout
from core.modeldir import ModelDirError
from server.app import begin_drain, create_app, wait_drained
from server.auth import KeyFileError, read_keys
from server.config import ServerConfig, parse_config
from server.engine import CHOICE_ENV, EngineError
from server.engine_choice import EngineChoice
from server.model import load_model
from server.predlog import PredictionLogError
from server.predlog import check as check_prediction_log
from server.state import API_KEYS
from server.supervisor import Supervisor, SupervisorError

log = logging.getLogger("server")

DRAIN_LINGER_S = 0.5


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access-log lines are already JSON and are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        base = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        message = record.getMessage()
        if record.name == "server.access":
            line = orjson.loads(message)
            line.update(base)
        else:
            line = {**base, "message": message}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # ours is server.access


async def serve(config: ServerConfig, app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP re-reads the API keys; without them it is logged, not the default (exit).
    keys = app.get(API_KEYS)
    loop.add_signal_handler(signal.SIGHUP, keys.reload if keys else lambda: log.info("SIGHUP: no API keys to re-read"))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_port=config.reuse_port or None)
    await site.start()
    log.info("listening on http://%s:%d", config.host, config.port)
    await stop.wait()

    started = time.monotonic()
    begin_drain(app)
    log.info("draining: readiness 503, new requests refused")
    drained = await wait_drained(app, config.drain_timeout_s)
    if not drained:
        log.warning("drain timeout: some accepted requests were not answered")
    # Linger briefly before closing connections: a request already on its way over a
    # kept-alive connection still gets an answer (503 + Connection: close), not a reset.
    linger = min(DRAIN_LINGER_S, max(0.0, config.drain_timeout_s - (time.monotonic() - started) - 0.1))
    await asyncio.sleep(linger)
    left = max(0.1, config.drain_timeout_s - (time.monotonic() - started))
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=left)
    except asyncio.TimeoutError:
        log.warning("shutdown did not finish within the drain timeout")
    log.info("stopped after %.2f s of draining", time.monotonic() - started)


def resolved_engine(config: ServerConfig) -> EngineChoice | None:
    """In a --processes child: the supervisor's measured choice of engine, when this child was
    started on it (server/supervisor.py); None otherwise."""
    carried = os.environ.get(CHOICE_ENV)
    if not carried:
        return None
    choice = EngineChoice.from_dict(orjson.loads(carried))
    return choice if choice.name == config.engine else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Until serve() takes it over, a key re-read (SIGHUP) must not end a server still starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = parse_config(argv)
    setup_logging(config.log_level)
    try:  # here, before the model loads or children start: one line, not N crashing children
        if config.api_key_file is not None:
            read_keys(config.api_key_file)
        if config.prediction_log is not None:
            check_prediction_log(config.prediction_log)
    except (KeyFileError, PredictionLogError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if config.processes != 1:
        try:
            gpu = model_on_gpu(config.model_dir)
        except ModelDirError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        layout = process_layout(config.processes, config.inference_workers, config.intra_op_threads, gpu)
        if layout.processes > 1:
            supervisor = Supervisor(config, layout, argv)
            try:
                supervisor.resolve_engine(gpu)
            except SupervisorError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            return supervisor.run()
        config = dataclasses.replace(config, inference_workers=layout.workers, intra_op_threads=layout.threads)
    # Until serve() takes the signal over, SIGTERM stops a server that has accepted nothing yet:
    # exit 0, which the supervisor of --processes counts as a clean stop.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    try:
        model = load_model(config, resolved_engine(config))
    except (ModelDirError, EngineError) as exc:  # a broken directory, an engine not installed or not loading
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(config, runner=model.runner, encoder=model.encoder)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, app))
    except OSError as exc:  # port in use, address not available
        print(f"error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
