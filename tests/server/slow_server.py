"""A server whose runner is slow on purpose (a fixed cost per token), for the overload tests.

`python tests/server/slow_server.py PORT BUDGET_MS` serves it as a process of its own, so that
a load test's client does not share the server's event loop and CPU time.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

PER_TOKEN_S, PER_BATCH_S = 0.0005, 0.001  # a 20-word text: 22 tokens, 12 ms


class SlowRunner:
    """One token per word; `predict` sleeps a fixed cost per token (sleeping, not computing,
    so the burst's timing does not hang on how busy the machine is). The first word of each
    text is `r<id>`: `seen` records the ids that reached the model. `stall` (when cleared)
    holds the batch in `predict` until set."""

    labels = ("negative", "positive")
    max_length = 64

    def __init__(self) -> None:
        self.info = {
            "model_name": "slow",
            "model_version": "0",
            "quantization": "none",
            "optimization": "none",
            "target": "cpu",
            "labels": list(self.labels),
            "max_length": self.max_length,
            "parity": {},
        }
        self.seen: list[int] = []
        self.stall = threading.Event()
        self.stall.set()
        self._lock = threading.Lock()

    def encode(self, texts):
        out = []
        for text in texts:
            words = text.split()
            first = int(words[0][1:]) if words and words[0].startswith("r") and words[0][1:].isdigit() else 0
            out.append(np.array([101, first, *([7] * max(len(words) - 1, 0)), 102][: self.max_length], dtype=np.int64))
        return out

    def predict(self, seqs):
        with self._lock:
            self.seen.extend(int(s[1]) for s in seqs)
        self.stall.wait(timeout=10)
        time.sleep(PER_TOKEN_S * sum(len(s) for s in seqs) + PER_BATCH_S)
        return np.array([[0.3, 0.7]] * len(seqs))

    def warmup(self) -> None:
        pass

    def time_curve(self):  # the cost it really has: the line the cost model starts from
        from server.costcurve import CurvePoint

        return [CurvePoint(1, n, PER_TOKEN_S * n + PER_BATCH_S) for n in (8, 16, 32, 64)]


def review(i: int, words: int = 20) -> str:
    return f"r{i} " + " ".join(["fine"] * (words - 1))


def main(port: int, budget_ms: float) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from aiohttp import web

    from server.app import create_app
    from server.config import ServerConfig

    config = ServerConfig(
        inference_workers=1, max_wait_ms=0, max_batch_tokens=64, max_queue=1024, latency_budget_ms=budget_ms, port=port
    )
    runner = SlowRunner()  # the fake does both jobs: texts -> ids and ids -> probabilities
    web.run_app(create_app(config, runner=runner, encoder=runner), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
