"""Configuration 2c's target: the real batcher and runner, driven without HTTP."""

from __future__ import annotations

import pytest

from bench.inprocess import InProcessServer
from server.batcher import QueueFull
from server.config import ServerConfig


async def test_answers_with_the_batch_result_and_refuses_beyond_the_queue(tiny_model_dir):
    config = ServerConfig(model_dir=tiny_model_dir, inference_workers=1, max_queue=1, max_batch_tokens=100)
    async with InProcessServer(config, ["a good film", "a bad one"]) as target:
        start = target.start(timeout_s=5.0)
        first, second = start(0), start(1)  # before the batcher runs: the second finds the queue full
        with pytest.raises(QueueFull):
            await second
        result = await first
    assert result.batch_size == 1 and result.probabilities.shape == (1, 2)
    assert target.info()["batching"]["max_batch_tokens"] == 100 and target.info()["batching"]["inference_workers"] == 1
