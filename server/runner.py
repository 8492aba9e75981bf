"""Token ids -> probabilities for one model directory, the graph run by an engine.

The second of the two jobs behind a prediction (texts -> ids is server/encoder.py's). The
engines (server/engine.py) import only their runtime (ONNX Runtime, OpenVINO) and numpy: the
serving process never loads torch or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.calibration import scaled_probs
from core.layout import cuda_wanted, physical_cores, uses_cuda
from core.modeldir import ModelDir, read_model_dir
from core.tokenization import SpecialIds, pad_batch
from server.costcurve import CurvePoint, curve_shapes, time_curve
from server.engine import Engine

# On a GPU each new input shape costs a first run ~40x its later runs (measured on an H200:
# 19 ms against 0.5 ms, docs/RESULTS.md), and a dynamic batcher makes a new (size, width)
# nearly every batch. So by default GPU batches are padded to a few shapes, all run at start-up.
GPU_SHAPE_BUCKET = 32


class Runner(Protocol):
    """What the inference layer needs from a model; the HTTP tests use a fake one."""

    labels: tuple[str, ...]
    max_length: int
    info: dict[str, Any]

    def predict(self, seqs: list[np.ndarray]) -> np.ndarray: ...

    def warmup(self) -> None: ...


class OnnxRunner:
    """Runs the model directory's graph on padded batches of ids on its engine (server/engine.py);
    returns softmax(logits / T) probabilities, T the model directory's calibration temperature
    (none: softmax(logits)). Padding, shape buckets, warm-up, timing and `info` are the runner's;
    the engine only runs a padded batch."""

    def __init__(
        self,
        model_dir: str | Path | ModelDir,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        sessions: int = 1,
        shape_bucket: int = 0,
        max_batch_size: int = 32,
        specials: SpecialIds | None = None,
        gpu: bool | None = None,
        engine: Engine | None = None,
    ) -> None:
        """`specials`: the tokenizer's [CLS]/[SEP]/[PAD] ids (read from the directory's
        tokenizer when not given), for padding batches and framing the warm-up's inputs.
        `engine`: what runs the graph (server.model.load_model picks it per --engine); default
        ONNX Runtime with `intra_op_threads`, `inter_op_threads` and `sessions`, on the CUDA
        provider where `gpu` (default: where the model was exported for a GPU and this ONNX
        Runtime has the provider)."""
        model = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
        serving = model.serving
        self.labels = model.labels
        truncation = model.truncation
        self.max_length = truncation.max_length
        self.temperature = model.temperature  # before the engine: a bad one fails in a moment
        self.specials = specials or model.encoder().specials
        if engine is None:
            from server.engine_ort import OrtEngine

            gpu = cuda_wanted(serving) if gpu is None else gpu
            threads = intra_op_threads or physical_cores()
            engine = OrtEngine(model, threads, inter_op_threads, sessions, "cuda" if gpu else "cpu")
        self.engine = engine
        providers = list(engine.info.get("providers", []))
        # 1 = off: pad each batch to its longest text only.
        self.shape_bucket = shape_bucket or (GPU_SHAPE_BUCKET if uses_cuda(providers) else 1)
        self.max_batch_size = max_batch_size
        self.info = {
            "model_name": serving.get("model_name", model.path.name),
            "model_version": str(serving.get("model_version", "unknown")),
            # the graph the engine runs (the OpenVINO IR is static int8; model.onnx as exported)
            "quantization": engine.info.get("quantization", serving.get("quantization", "unknown")),
            "optimization": serving.get("optimization", "unknown"),
            "target": serving.get("target", "cpu"),
            "labels": list(self.labels),
            "max_length": self.max_length,
            "truncation": truncation.to_dict(),
            "providers": providers,
            "intra_op_threads": engine.info.get("intra_op_threads"),
            "sessions": engine.info.get("sessions", engine.info.get("requests", 1)),
            "inter_op_threads": engine.info.get("inter_op_threads", inter_op_threads),
            "shape_bucket": self.shape_bucket,
            # Which engine runs the graph, on what, and (server.model) why it was chosen.
            "engine": dict(engine.info),
            "parity": model.parity_summary(),
            # The training data's label share (export_report.json's reference): the drift gauge's.
            "label_share": model.label_share(),
            # The temperature applied and the export's calibration error before/after it.
            "calibration": model.calibration_summary(),
            # python -m exporter.robustness's summary, read at start-up (None: never run on this model).
            "robustness": model.robustness_summary(),
        }

    def predict(self, seqs: list[np.ndarray]) -> np.ndarray:
        if self.shape_bucket > 1:
            rows = 1 << (len(seqs) - 1).bit_length()  # next power of two
            ids, mask = pad_batch(seqs, self.specials.pad_id, self.shape_bucket, rows, self.max_length)
        else:
            ids, mask = pad_batch(seqs, self.specials.pad_id)
        logits = self.engine.run(ids, mask)
        return scaled_probs(logits[: len(seqs)], self.temperature)

    def warmup_shapes(self) -> list[tuple[int, int]]:
        """(batch size, width) pairs run by `warmup`: with shape buckets, every shape a batch of
        up to max_batch_size texts can take; else a few, for lazy initialisation."""
        if self.shape_bucket <= 1:
            return [(1, 8), (4, 32), (2, self.max_length)]
        sizes = [1 << k for k in range((self.max_batch_size - 1).bit_length() + 1)]
        widths = sorted(
            {
                min(w, self.max_length)
                for w in range(self.shape_bucket, self.max_length + self.shape_bucket, self.shape_bucket)
            }
        )
        return [(size, width) for size in sizes for width in widths]

    def timing_shapes(self) -> list[tuple[int, int]]:
        """(batch size, width) pairs timed after warm-up. On a CPU, the cost curve's grid
        (server/costcurve.py): batch sizes up to 16 at a short and a full width, from which the
        batch budget is planned. On a GPU, whose budget stays fixed and wide, single texts from
        short to the cap and one batch of several. Either seeds the admission cost model."""
        if not uses_cuda(self.info["providers"]):
            return curve_shapes(self.max_length, self.max_batch_size)
        widths = sorted({max(8, self.max_length // k) for k in (8, 4, 2, 1)})
        return [(1, w) for w in widths] + [(min(self.max_batch_size, 8), max(8, self.max_length // 2))]

    def warmup(self) -> None:
        """Run the shapes of `warmup_shapes` so that no request pays for a first run."""
        for batch, length in self.warmup_shapes():
            seq = np.full(length, self.specials.pad_id, dtype=np.int64)
            seq[0], seq[-1] = self.specials.cls_id, self.specials.sep_id
            self.predict([seq] * batch)

    def time_curve(self) -> list[CurvePoint]:
        """`timing_shapes` timed, run after `warmup`: the cost curve the batch budget is planned
        from (CPU) and the admission cost model's first line (server/costmodel.py)."""
        return time_curve(self.predict, self.timing_shapes(), self.specials.pad_id)
