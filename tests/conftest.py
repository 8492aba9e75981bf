"""Shared fixtures: a tiny randomly initialised checkpoint and its exported model directory.

Both are built once per session: the real packaged WordPiece tokenizer, a 2-layer BERT
with hidden size 32, saved exactly as the trainer saves checkpoints, then exported by
the real exporter. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_model import REVIEWS, build_tiny_checkpoint, packaged_model_dir  # noqa: F401


@pytest.fixture(scope="session")
def reviews() -> list[tuple[str, int]]:
    return list(REVIEWS)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint")


def export_tiny(out: Path, checkpoint: Path, *extra: str) -> Path:
    """The real exporter on the tiny checkpoint, the parity gate opened wide and uncalibrated
    (see tiny_model_dir), plus `extra` flags."""
    from exporter.__main__ import main as export_main

    gate = ("--eval-samples", "16", "--max-accuracy-drop", "100", "--min-agreement", "0", "--no-calibrate")
    code = export_main(["--checkpoint", str(checkpoint), "--output-dir", str(out), *extra, *gate])
    assert code == 0, f"tiny model export failed ({' '.join(extra)})"
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """int8 ONNX model directory exported from the tiny checkpoint by the real exporter.

    The parity gate is opened wide: a random model's int8 labels are coin flips near 0.5. It is
    not calibrated (the export would fit one only where data/imdb is present, and a coin-flip
    model's temperature is its search bound): the tests that want a temperature write one.
    """
    return export_tiny(tmp_path_factory.mktemp("model") / "model", tiny_checkpoint, "--quantize", "int8")


@pytest.fixture(scope="session")
def tiny_openvino_model_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny model directory with the static int8 OpenVINO IR beside model.onnx
    (`--openvino-int8`, calibrated on 32 training reviews where data/imdb is present). Skipped
    where the openvino extra (openvino, nncf) is not installed."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install '.[openvino]')")
    pytest.importorskip("nncf", reason="the openvino extra is not installed (pip install '.[openvino]')")
    extra = ("--openvino-int8", "--openvino-calibration-samples", "32", "--latency-repeats", "2")
    return export_tiny(tmp_path_factory.mktemp("openvino") / "model", tiny_checkpoint, *extra)
