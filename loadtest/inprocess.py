"""The server's batcher and inference workers, driven in this process without HTTP.

The benchmark's configuration 2c. Between the ceiling (a queue that is never empty) and the
HTTP server (2) lie two kinds of loss: queueing under random arrivals, and everything HTTP
costs (parsing, JSON, the event loop, the load generator beside the server). Here each
arrival is tokenized where it arrives (the CPU the server's tokenizer thread spends) and
submitted to a real `MicroBatcher` running the real `OnnxRunner` with the server's settings;
its answer is the batch's future. So 2c sits between 1 and 2, and splits the gap.
"""
from __future__ import annotations

import asyncio
from typing import Sequence

from loadtest.openloop import Start
from server.app import batch_limits, inference_workers, load_runner
from server.batcher import MicroBatcher
from server.config import ServerConfig


class InProcessServer:
    """`async with InProcessServer(config, texts) as target: target.start(timeout_s)`."""

    def __init__(self, config: ServerConfig, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.runner = load_runner(config)
        self.runner.warmup()
        self.workers = inference_workers(config, self.runner)
        self.limits = batch_limits(config, self.runner)
        self._config = config
        self.batcher: MicroBatcher | None = None

    async def __aenter__(self) -> InProcessServer:
        self.batcher = MicroBatcher(self.runner.predict, self.limits, self._config.max_queue, workers=self.workers)
        await self.batcher.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.batcher.stop()

    def start(self, timeout_s: float) -> Start:
        """Text k: tokenize, submit with a deadline of `timeout_s`, answer = its future."""
        loop = asyncio.get_running_loop()

        def start(k: int) -> asyncio.Future:
            try:
                (future,) = self.batcher.submit(self.runner.encode([self.texts[k]]), loop.time() + timeout_s)
            except Exception as exc:  # noqa: BLE001 - QueueFull, ShuttingDown: an error answer, as over HTTP
                future = loop.create_future()
                future.set_exception(exc)
            return future

        return start

    def info(self) -> dict:
        """The settings in force, shaped like the server's GET /v1/model."""
        return {"intra_op_threads": self.runner.info.get("intra_op_threads"),
                "batching": {"inference_workers": self.workers, "max_batch_size": self.limits.max_batch_size,
                             "max_batch_tokens": self.limits.max_batch_tokens,
                             "max_wait_ms": self.limits.max_wait_s * 1000.0,
                             "max_padding_ratio": self.limits.max_padding}}
