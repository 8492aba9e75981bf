"""Checkpoint loading and the plain fp32 ONNX export (optimum, dynamic batch and sequence)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.checkpoint import CheckpointError, check_checkpoint_dir, read_training_config
from core.tokenization import TextEncoder, TruncationConfig

__all__ = ["Checkpoint", "CheckpointError", "export_onnx", "load_checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    hf_config: dict
    training_config: dict
    truncation: TruncationConfig
    model: Any  # transformers PreTrainedModel, eval mode (torch is imported only when loading)

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def encoder(self) -> TextEncoder:
        """The tokenizer with the checkpoint's truncation (what core.checkpoint's record builds)."""
        return TextEncoder.from_file(self.tokenizer_file, self.truncation)


def load_checkpoint(path: Path) -> Checkpoint:
    """Validate the trainer's layout, then load the PyTorch model (eval mode, fp32)."""
    path = check_checkpoint_dir(path)
    try:
        hf_config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from None
    record = read_training_config(path)
    training, truncation = record.values, record.truncation
    try:
        record.encoder()
    except Exception as exc:  # tokenizers raises bare Exception subclasses
        raise CheckpointError(f"checkpoint tokenizer/truncation unusable: {exc}") from None

    import transformers
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    except Exception as exc:  # corrupt weights, unknown architecture, shape mismatch...
        raise CheckpointError(f"cannot load model from {path}: {type(exc).__name__}: {_first_line(exc)}") from None
    if int(model.config.num_labels) < 2:
        raise CheckpointError(f"checkpoint {path} has {model.config.num_labels} labels, need >= 2")
    return Checkpoint(path, hf_config, training, truncation, model)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def export_onnx(checkpoint: Checkpoint, work_dir: Path, opset: int | None = None) -> Path:
    """fp32 graph with dynamic batch and sequence axes; returns its path.

    optimum's own validation is off: parity.py compares against PyTorch on real reviews
    through the server's preprocessing, which is the comparison that matters.
    """
    from optimum.exporters.onnx import onnx_export_from_model

    out = Path(work_dir) / "fp32"
    with warnings.catch_warnings():  # torch's TracerWarnings about constant masks are expected
        warnings.simplefilter("ignore")
        onnx_export_from_model(checkpoint.model, out, opset=opset, task="text-classification", do_validation=False)
    model_path = out / "model.onnx"
    if not model_path.is_file():
        raise RuntimeError(f"optimum produced no model.onnx in {out}")
    return model_path
