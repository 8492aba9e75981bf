"""export_report.json and the `serving` block of config.json."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.reference import build_reference
from core.tokenization import TextEncoder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit(directory: Path) -> str | None:
    """HEAD of the repository holding `directory`, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict:
    import onnx
    import onnxruntime
    import optimum.version
    import torch
    import transformers

    return {
        "onnxruntime": onnxruntime.__version__,
        "optimum": optimum.version.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def graph_facts(model_path: Path) -> dict:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "input_names": [i.name for i in model.graph.input],
        "output_names": [o.name for o in model.graph.output],
        "op_counts": dict(sorted(ops.items())),
    }


def input_reference(encoder: TextEncoder, eval_set: Any, id2label: dict[Any, Any]) -> dict | None:
    """The `reference` block (core/reference.py): the parity reviews' served token counts and
    the training data's label share. None for random text, which is no reference for reviews."""
    if eval_set.labels is None:
        return None
    lengths = [len(ids) for ids in encoder.encode_batch(eval_set.texts)]
    names = {int(k): str(v) for k, v in id2label.items()}
    counts = {names.get(k, str(k)): n for k, n in sorted((eval_set.label_counts or {}).items())}
    return build_reference(lengths, eval_set.source, counts or None, eval_set.label_source).to_dict()


def serving_block(
    truncation: dict,
    model_name: str,
    model_version: str,
    quantization: str,
    optimization: str,
    target: str,
    temperature: float | None = None,
) -> dict:
    """config.json's `serving` block; `temperature` only where one was fitted (the server reads
    its absence as uncalibrated, as in a directory exported before calibration)."""
    block: dict[str, Any] = {
        "truncation": truncation,
        "model_name": model_name,
        "model_version": model_version,
        "quantization": quantization,
        "optimization": optimization,
        "target": target,
    }
    if temperature is not None:
        block["temperature"] = temperature
    return block


def engine_record(graph: str, quantization: str, parity: dict, **facts: Any) -> dict:
    """One entry of the report's `engines` block: the graph an engine ran, its parity figures
    (parity_report's: `onnx_accuracy` is the engine's) and what else is known of the run."""
    return {"graph": graph, "quantization": quantization, **facts, "parity": parity}


def build_report(
    *,
    checkpoint: Path,
    training_config: dict,
    config: dict,
    isa: str | None,
    quantization: str,
    optimization: str,
    graph: dict,
    sizes: dict,
    parity: dict,
    latency: dict,
    serving: dict,
    steps: list[str],
    reference: dict | None = None,
    calibration: dict | None = None,
    engines: dict | None = None,
) -> dict:
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_checkpoint": str(Path(checkpoint).resolve()),
        # the trainer records the commit it ran from; the exporter's own is a fallback clue
        "source_git_commit": training_config.get("git_commit"),
        "exporter_git_commit": git_commit(Path(__file__).parent),
        "base_model": training_config.get("base_model"),
        "versions": versions(),
        "opset": graph["opset"],
        "input_names": graph["input_names"],
        "output_names": graph["output_names"],
        "op_counts": graph["op_counts"],
        "target": serving["target"],
        "quantization": quantization,
        "quantization_isa": isa,
        "per_channel": config.get("per_channel") if quantization == "int8" else None,
        "optimization": optimization,
        "pipeline": steps,
        "file_sizes_bytes": sizes,
        "parity": parity,
        "latency_ms": latency,
        "model_name": serving["model_name"],
        "model_version": serving["model_version"],
        "config": config,
        # What served traffic is compared with (server/monitor.py); null without labelled data.
        "reference": reference,
        # The temperature the server applies, ECE and accuracy before/after (exporter/calibrate.py).
        "calibration": calibration,
        # Engine -> the graph it ran through the parity gate and its figures: what the server's
        # --engine auto may choose among (core.modeldir.ModelDir.checked_engines).
        "engines": engines or {},
    }
