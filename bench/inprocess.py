"""The server's inference layer, batcher and inference workers, driven in this process without HTTP.

The benchmark's configuration 2c. Between the ceiling (a queue that is never empty) and the
HTTP server (2) lie two kinds of loss: queueing under random arrivals, and everything HTTP
costs (parsing, JSON, the event loop, the load generator beside the server). Here each
arrival calls the server's own `InferenceService.predict` (admission, the tokenizer thread, the
real `MicroBatcher` running the real `OnnxRunner` with the server's settings), so 2c sits
between 1 and 2, and splits the gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bench.openloop import Start
from server.config import ServerConfig
from server.inference import InferenceService, startup_curve
from server.model import load_model


class InProcessServer:
    """`async with InProcessServer(config, texts) as target: target.start(timeout_s)`."""

    def __init__(self, config: ServerConfig, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.model = load_model(config)
        self.runner = self.model.runner
        self.runner.warmup()
        self._curve = startup_curve(self.runner)
        self._config = config
        self.service: InferenceService | None = None

    async def __aenter__(self) -> InProcessServer:
        self.service = InferenceService(self.model.encoder, self.runner, self._config, curve=self._curve)
        await self.service.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._running().stop()

    def _running(self) -> InferenceService:
        if self.service is None:
            raise RuntimeError("InProcessServer is used inside `async with` only")
        return self.service

    def start(self, timeout_s: float) -> Start:
        """Text k: `service.predict([text])` as a task; its answer is the task's result. The
        server's --request-timeout-ms applies, as over HTTP (`timeout_s` bounds nothing here)."""
        service = self._running()

        def start(k: int) -> asyncio.Future:
            return asyncio.ensure_future(service.predict([self.texts[k]]))

        return start

    def info(self) -> dict:
        """The settings in force, shaped like the server's GET /v1/model."""
        return {"intra_op_threads": self.runner.info.get("intra_op_threads"), "batching": self._running().info()}
