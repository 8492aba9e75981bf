"""ONNX Runtime latency on the exporting machine: median per batch at fixed shapes."""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

from exporter.parity import onnx_feed

BATCH_SIZES = (1, 8, 32)
SEQ_LEN = 128
WARMUP = 2


def measure_latency(session, repeats: int = 10, batch_sizes=BATCH_SIZES, seq_len: int = SEQ_LEN,
                    threads: int = 0, vocab_size: int = 30522, seed: int = 0) -> dict:
    """Median and per-sample milliseconds for full (unpadded) batches of `seq_len` tokens."""
    rng = np.random.default_rng(seed)
    results = {}
    for batch in batch_sizes:
        ids = rng.integers(1000, vocab_size, size=(batch, seq_len), dtype=np.int64)
        feed = onnx_feed(session, ids, np.ones_like(ids))
        for _ in range(WARMUP):
            session.run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000.0)
        median = statistics.median(times)
        results[str(batch)] = {"median_ms": round(median, 3), "per_sample_ms": round(median / batch, 3)}
    return {
        "seq_len": seq_len,
        "repeats": repeats,
        # 0 lets ORT pick one thread per physical core; record what that meant here
        "intra_op_threads": threads or os.cpu_count(),
        "intra_op_threads_setting": threads,
        "batches": results,
    }
