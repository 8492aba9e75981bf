"""The model behind the server: tokenization and an ONNX Runtime session for one model directory.

Imports only onnxruntime, tokenizers (through server.tokenization) and numpy: the serving
process never loads torch or transformers.
"""
from __future__ import annotations

import json
import os
import queue
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from server.costmodel import time_batches
from server.tokenization import TextEncoder, TruncationConfig, pad_batch

MODEL_FILES = ("model.onnx", "tokenizer.json", "config.json")
# No truncation mode: encode everything, then refuse texts over max_length.
_NO_LIMIT = 1 << 30
# On a GPU each new input shape costs a first run ~40x its later runs (measured on an H200:
# 19 ms against 0.5 ms, docs/RESULTS.md), and a dynamic batcher makes a new (size, width)
# nearly every batch. So by default GPU batches are padded to a few shapes, all run at start-up.
GPU_SHAPE_BUCKET = 32


class ModelDirError(Exception):
    """The model directory is missing or malformed (one-line message)."""


class Runner(Protocol):
    """What the server needs from a model; the HTTP tests use a fake one."""

    labels: tuple[str, ...]
    max_length: int
    info: dict

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def predict(self, seqs: list[np.ndarray]) -> np.ndarray: ...

    def warmup(self) -> None: ...


def physical_cores() -> int:
    """Physical cores this process may use: SMT siblings counted once, capped by a cgroup
    CPU quota (a container limited to 2 CPUs on a 64-core node must not start 32 threads)."""
    try:
        available = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in available:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(path.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    quota = _cgroup_cpu_quota()
    count = len(cores) if quota is None else min(len(cores), max(1, int(quota + 0.5)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by cgroup v2 `cpu.max` (or v1 cfs quota); None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def thread_layout(inference_workers: int = 0, intra_op_threads: int = 0, gpu: bool = False) -> tuple[int, int]:
    """(inference workers, ONNX Runtime threads per run) with 0s resolved: one worker per
    physical core on CPU, one on a GPU (its runs share one CUDA stream, so more workers add
    no overlap: Triton's default too), and the cores split among the workers."""
    cores = physical_cores()
    workers = inference_workers or (1 if gpu else cores)
    return workers, intra_op_threads or max(1, cores // workers)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def read_model_dir(model_dir: Path) -> tuple[dict, dict]:
    """(config.json, export_report.json or {}) with one-line errors for a broken directory."""
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ModelDirError(f"model directory {model_dir} lacks {', '.join(missing)}")
    try:
        config = json.loads((model_dir / "config.json").read_text())
        report_path = model_dir / "export_report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"model directory {model_dir}: unreadable json ({exc})") from None
    if "id2label" not in config:
        raise ModelDirError(f"{model_dir / 'config.json'} has no id2label")
    return config, report


class OnnxRunner:
    """Tokenizes with the shared TextEncoder and runs the ONNX graph; returns softmax probabilities."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0, inter_op_threads: int = 1,
                 truncate: bool = True, sessions: int = 1, shape_bucket: int = 0,
                 max_batch_size: int = 32) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        config, report = read_model_dir(model_dir)
        serving = config.get("serving", {})
        id2label = {int(k): v for k, v in config["id2label"].items()}
        self.labels = tuple(id2label[i] for i in sorted(id2label))
        truncation = TruncationConfig.from_dict(serving.get("truncation", {}))
        self.max_length = truncation.max_length
        encode_cfg = truncation if truncate else TruncationConfig(max_length=_NO_LIMIT)
        try:
            self.encoder = TextEncoder.from_file(model_dir / "tokenizer.json", encode_cfg)
        except Exception as exc:  # tokenizers raises its own Exception types
            raise ModelDirError(f"{model_dir / 'tokenizer.json'}: cannot load tokenizer ({exc})") from None

        self.intra_op_threads = intra_op_threads or physical_cores()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads otherwise spin for a while after each run, stealing the cores the
        # event loop and the tokenizer thread need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_wanted(serving) else ["CPUExecutionProvider"]
        # `run` is thread-safe, but a session has one intra-op pool that concurrent runs share:
        # workers that each want their own threads need their own session (weights loaded once
        # per session; ~23 MB for int8 MiniLM). Single-threaded runs compute on the caller's
        # thread, so one session serves any number of workers.
        try:
            all_sessions = [ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=providers)
                            for _ in range(max(1, sessions))]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelDirError(f"{model_dir / 'model.onnx'}: cannot load ({str(exc).splitlines()[0]})") from None
        self.session = all_sessions[0]
        # With several sessions, each run borrows one; a single session is shared, unlocked.
        self._sessions: queue.SimpleQueue | None = None
        if len(all_sessions) > 1:
            self._sessions = queue.SimpleQueue()
            for session in all_sessions:
                self._sessions.put(session)
        # 1 = off: pad each batch to its longest text only.
        self.shape_bucket = shape_bucket or (GPU_SHAPE_BUCKET if uses_cuda(self.session.get_providers()) else 1)
        self.max_batch_size = max_batch_size
        self.input_names = {i.name for i in self.session.get_inputs()}
        self._output = self.session.get_outputs()[0].name
        self.info = {
            "model_name": serving.get("model_name", model_dir.name),
            "model_version": str(serving.get("model_version", "unknown")),
            "quantization": serving.get("quantization", "unknown"),
            "optimization": serving.get("optimization", "unknown"),
            "target": serving.get("target", "cpu"),
            "labels": list(self.labels),
            "max_length": self.max_length,
            "truncation": truncation.to_dict(),
            "truncate": truncate,
            "providers": self.session.get_providers(),
            "intra_op_threads": self.intra_op_threads,
            "sessions": len(all_sessions),
            "inter_op_threads": inter_op_threads,
            "shape_bucket": self.shape_bucket,
            "parity": parity_summary(report),
        }

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.encoder.encode_batch(texts)

    def predict(self, seqs: list[np.ndarray]) -> np.ndarray:
        if self.shape_bucket > 1:
            rows = 1 << (len(seqs) - 1).bit_length()  # next power of two
            ids, mask = pad_batch(seqs, self.encoder.pad_id, self.shape_bucket, rows, self.max_length)
        else:
            ids, mask = pad_batch(seqs, self.encoder.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        if self._sessions is None:
            (logits,) = self.session.run([self._output], feed)
        else:
            session = self._sessions.get()  # never waits with sessions >= concurrent callers
            try:
                (logits,) = session.run([self._output], feed)
            finally:
                self._sessions.put(session)
        return softmax(logits[: len(seqs)])

    def warmup_shapes(self) -> list[tuple[int, int]]:
        """(batch size, width) pairs run by `warmup`: with shape buckets, every shape a batch of
        up to max_batch_size texts can take; else a few, for lazy initialisation."""
        if self.shape_bucket <= 1:
            return [(1, 8), (4, 32), (2, self.max_length)]
        sizes = [1 << k for k in range((self.max_batch_size - 1).bit_length() + 1)]
        widths = sorted({min(w, self.max_length)
                         for w in range(self.shape_bucket, self.max_length + self.shape_bucket, self.shape_bucket)})
        return [(size, width) for size in sizes for width in widths]

    def timing_shapes(self) -> list[tuple[int, int]]:
        """(batch size, width) pairs timed after warm-up, for the admission cost model's first
        line: single texts from short to the cap (where a CPU's cost lives) and one batch of
        several (where a GPU's does)."""
        widths = sorted({max(8, self.max_length // k) for k in (8, 4, 2, 1)})
        return [(1, w) for w in widths] + [(min(self.max_batch_size, 8), max(8, self.max_length // 2))]

    def warmup(self) -> None:
        """Run the shapes of `warmup_shapes` so that no request pays for a first run."""
        for batch, length in self.warmup_shapes():
            seq = np.full(length, self.encoder.pad_id, dtype=np.int64)
            seq[0], seq[-1] = self.encoder.cls_id, self.encoder.sep_id
            self.predict([seq] * batch)

    def time_shapes(self) -> list[tuple[int, float]]:
        """(tokens, seconds) of `timing_shapes`, run after `warmup`: the first line of the
        admission cost model (server/costmodel.py)."""
        return time_batches(self.predict, self.timing_shapes(), self.encoder.pad_id)


def uses_cuda(providers) -> bool:
    """Whether a session with these providers (as ONNX Runtime lists them) runs on the GPU."""
    return "CUDAExecutionProvider" in providers


def cuda_wanted(serving: dict) -> bool:
    """A model directory's graph goes on the GPU when it was exported for one (`serving`
    block of its config.json) and this ONNX Runtime has the CUDA provider."""
    import onnxruntime as ort

    return serving.get("target") == "gpu" and uses_cuda(ort.get_available_providers())


def model_on_gpu(model_dir: str | Path) -> bool:
    """Whether OnnxRunner will run this model directory on the GPU (ModelDirError if broken)."""
    return cuda_wanted(read_model_dir(Path(model_dir))[0].get("serving", {}))


def parity_summary(report: dict) -> dict:
    """The scalar parity figures of export_report.json (agreement, accuracies, max prob diff...)."""
    parity = report.get("parity", {})
    return {k: v for k, v in parity.items() if isinstance(v, (int, float, str, bool))}
