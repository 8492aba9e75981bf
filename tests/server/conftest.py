"""Server test helpers: a fake runner for HTTP-layer tests (the end-to-end tests use the tiny model)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

FAIL_MARKER = "FAIL-THIS-BATCH"
_FAIL_ID = 999_999


class FakeRunner:
    """Deterministic stand-in: one token per word, probability of `positive` from the length.

    `gate` (when cleared) blocks inference, to hold batches in flight; a text containing
    FAIL_MARKER makes its whole batch raise. `active`/`peak` count `predict` calls running
    at once (now / at most), for the inference-worker tests.
    """

    labels = ("negative", "positive")
    fail_marker = FAIL_MARKER

    def __init__(self, max_length: int = 64) -> None:
        self.max_length = max_length
        self.info = {
            "model_name": "fake",
            "model_version": "0",
            "quantization": "none",
            "optimization": "none",
            "target": "cpu",
            "labels": list(self.labels),
            "max_length": max_length,
            "parity": {},
        }
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[int]] = []  # first word-token of each text, per batch
        self.started = threading.Event()  # set when a batch starts
        self.active = 0
        self.peak = 0
        self._active_changed = threading.Condition()

    def encode(self, texts):
        out = []
        for text in texts:
            ids = [_FAIL_ID if FAIL_MARKER in text else len(w) for w in text.split()] or [0]
            out.append(np.array([101, *ids, 102], dtype=np.int64))
        return out

    def predict(self, seqs):
        with self._active_changed:
            self.batches.append([int(s[1]) for s in seqs])
            self.active += 1
            self.peak = max(self.peak, self.active)
            self._active_changed.notify_all()
        self.started.set()
        try:
            if not self.gate.wait(timeout=10):
                raise TimeoutError("test gate never opened")
            if any(_FAIL_ID in s for s in seqs):
                raise RuntimeError("injected failure")
            return np.array([expected_positive(len(s)) for s in seqs])
        finally:
            with self._active_changed:
                self.active -= 1

    def wait_active(self, n: int, timeout: float = 5.0) -> bool:
        """Block (call it through asyncio.to_thread) until `n` predict calls run at once."""
        with self._active_changed:
            return self._active_changed.wait_for(lambda: self.active >= n, timeout)

    def warmup(self) -> None:
        pass


def expected_positive(n_tokens: int) -> list[float]:
    p = (n_tokens % 10) / 10
    return [1 - p, p]


@pytest.fixture
def fake_runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def serve_fake(aiohttp_client, fake_runner):
    """Start the real app (fake model) on a loopback port: `client = await serve_fake(max_queue=4)`."""
    from server.app import create_app
    from server.config import ServerConfig

    async def start(**overrides):
        # One worker unless a test asks for more: the fake's gate holds one batch at a time.
        config = ServerConfig(**{"inference_workers": 1, **overrides})
        app = create_app(config, runner=fake_runner, encoder=fake_runner)
        return await aiohttp_client(app)

    return start
