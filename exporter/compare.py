"""PyTorch against ONNX Runtime on the same ids: the one place that runs either engine.

The export gate (exporter/parity.py), the exporter's benchmark (exporter/benchmark.py) and the
whole-split accuracy scorer (exporter/accuracy.py) all compare engines through these
functions. Every engine is fed the ids the server makes (core.tokenization's TextEncoder, then
pad_batch per length-sorted batch), so a difference between them is the graph's, not the
tokenizer's.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.probs import softmax
from core.tokenization import TextEncoder, pad_batch

# An engine: (ids, mask) of one padded batch -> probabilities [rows, labels].
Engine = Callable[[np.ndarray, np.ndarray], np.ndarray]

LATENCY_BATCH_SIZES = (1, 8, 32)
LATENCY_SEQ_LEN = 128
LATENCY_WARMUP = 2


def open_session(path: Path, target: str = "cpu", threads: int = 0, spinning: bool = True) -> Any:
    """`spinning=False` when several engines share the cores: ORT's idle workers otherwise
    busy-wait after each run and starve whatever runs next (PyTorch, another session)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if target == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def onnx_feed(session: Any, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:  # BERT has segment embeddings; one segment -> zeros
        feed["token_type_ids"] = np.zeros_like(ids)
    return {k: v for k, v in feed.items() if k in names}


def torch_probs(model: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A PyTorch sequence classifier's probabilities for one padded batch (its own device and dtype)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(
            input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device)
        ).logits
    return softmax(logits.float().cpu().numpy())


def onnx_logits(session: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The graph's logits for one padded batch, float32 (what calibration is fitted on)."""
    return np.asarray(session.run(None, onnx_feed(session, ids, mask))[0], dtype=np.float32)


def open_openvino(path: Path, threads: int = 0) -> Any:
    """The OpenVINO IR (or ONNX graph) at `path` compiled for the CPU as the server's openvino
    engine compiles it, OpenVINO choosing the inference precision (bf16 on a CPU with AMX)."""
    import openvino as ov

    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(path), "CPU", config)


def openvino_logits(compiled: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A compiled OpenVINO model's logits for one padded batch, float32."""
    names = {i.get_any_name() for i in compiled.inputs}
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return np.array(compiled({k: v for k, v in feed.items() if k in names})[0], dtype=np.float32)


def onnx_probs(session: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return softmax(onnx_logits(session, ids, mask))


def batched_probs(
    engines: Mapping[str, Engine],
    encoder: TextEncoder,
    texts: Sequence[str],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Each engine's probabilities (or logits) [texts, labels] in input order, on the same length-sorted
    padded batches (as the server's batcher makes them: each batch pads little). `progress` is
    told how many texts are done after each batch."""
    seqs = encoder.encode_batch(texts)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], encoder.pad_id)
        for name, engine in engines.items():
            probs = engine(ids, mask)
            if name not in out:
                out[name] = np.zeros((len(seqs), probs.shape[1]), dtype=np.float32)
            out[name][idx] = probs
        if progress is not None:
            progress(start + len(idx))
    return out


def measure_latency(
    session: Any,
    repeats: int = 10,
    batch_sizes: Sequence[int] = LATENCY_BATCH_SIZES,
    seq_len: int = LATENCY_SEQ_LEN,
    threads: int = 0,
    vocab_size: int = 30522,
    seed: int = 0,
) -> dict[str, Any]:
    """ONNX Runtime on the exporting machine: median and per-sample milliseconds for full
    (unpadded) batches of `seq_len` tokens."""
    rng = np.random.default_rng(seed)
    results = {}
    for batch in batch_sizes:
        ids = rng.integers(1000, vocab_size, size=(batch, seq_len), dtype=np.int64)
        feed = onnx_feed(session, ids, np.ones_like(ids))
        for _ in range(LATENCY_WARMUP):
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
