"""Static int8 for OpenVINO (`--openvino-int8`): the fp32 export quantized by NNCF, its
activation ranges calibrated on training reviews, saved as openvino_model.xml/.bin beside the
dynamic int8 model.onnx.

Static: the activations' scales are fixed at export from the calibration reviews, so a run
does no scale search of its own; OpenVINO then runs int8 kernels end to end (issue 20 measured
1.36x ONNX Runtime's dynamic int8 per core at batch 8 on a Xeon with AMX, and agreement 0.997
with fp32 against 0.984). The reviews go through the model's own encoder (cleaning, truncation),
as the server's do. NNCF works on the plain optimum export, not on ONNX Runtime's fused graph:
OpenVINO has no conversion for the fused int8 operators (QAttention, QEmbedLayerNormalization).
The IR passes the same parity gate as model.onnx, on the same reviews (exporter/__main__.py).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from core.modeldir import OPENVINO_FILES
from core.tokenization import TextEncoder

log = logging.getLogger("exporter")
PRESETS = ("mixed", "performance")
QUANTIZATION = "int8-static"
INSTALL_HINT = "pip install '.[openvino]'"


def missing() -> str | None:
    """Why `--openvino-int8` cannot run here, None where openvino and nncf import."""
    absent = []
    for module in ("openvino", "nncf"):
        try:
            __import__(module)
        except ImportError:
            absent.append(module)
    return f"--openvino-int8 needs {' and '.join(absent)} ({INSTALL_HINT})" if absent else None


def versions() -> dict[str, str]:
    import nncf
    import openvino

    return {"openvino": openvino.get_version(), "nncf": nncf.__version__}


def calibration_items(encoder: TextEncoder, texts: list[str], input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """One unpadded review per item, as the server feeds it: a range fitted on padding would
    be padding's."""
    items = []
    for seq in encoder.encode_batch(texts):
        ids = np.asarray(seq, dtype=np.int64)[None, :]
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        items.append({name: feed[name] for name in input_names})
    return items


def quantize(fp32: Path, out_dir: Path, encoder: TextEncoder, texts: list[str], preset: str) -> dict[str, Any]:
    """NNCF static int8 of the fp32 ONNX export into out_dir/openvino_model.xml (+ .bin);
    returns what the report records of it."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # its per-step lines, on every export
    model = ov.Core().read_model(str(fp32))
    names = [i.get_any_name() for i in model.inputs]
    items = calibration_items(encoder, texts, names)
    # NNCF's progress bars (rich) go to stdout, where the exporter prints only its summary line.
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(items),
            preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(items),
        )
    xml = out_dir / OPENVINO_FILES[0]
    ov.save_model(quantized, str(xml))  # fp32 constants left (embeddings, LayerNorm) stored as fp16
    return {
        "graph": OPENVINO_FILES[0],
        "quantization": QUANTIZATION,
        "method": f"NNCF post-training static int8 (preset {preset}, model_type transformer)",
        "calibration_samples": len(items),
        **versions(),
    }


def build_and_check(
    fp32: Path, stage: Path, encoder: TextEncoder, eval_set: Any, pytorch_probs: np.ndarray, cfg: Any
) -> dict:
    """The IR of `quantize` in `stage`, compiled as the server's engine compiles it and scored on
    the gate's reviews, on the batches PyTorch's probabilities came from: the report's
    `engines.openvino` entry (exporter/__main__.py gates its `parity`)."""
    from exporter import compare, parity
    from exporter.report import engine_record

    texts, source = eval_set.train_texts, eval_set.train_source
    if not texts:  # random text, or a data directory without a train split apart from the eval reviews
        texts, source = eval_set.texts, f"{eval_set.source} (no training reviews apart from the gate's)"
        log.warning("--openvino-int8: no training reviews; calibrating on the parity reviews themselves")
    texts = texts[: cfg.openvino_calibration_samples]
    log.info("static int8 OpenVINO IR: NNCF %s preset, %d calibration reviews", cfg.openvino_preset, len(texts))
    facts = quantize(fp32, stage, encoder, texts, cfg.openvino_preset)
    compiled = compare.open_openvino(stage / OPENVINO_FILES[0], cfg.threads)
    logits = compare.batched_probs(
        {"openvino": lambda ids, mask: compare.openvino_logits(compiled, ids, mask)},
        encoder,
        eval_set.texts,
        parity.BATCH,
    )["openvino"]
    result = parity.parity_report(pytorch_probs, logits, eval_set)
    log.info("openvino %s: agreement %.4f on %d reviews", facts["graph"], result["label_agreement"], result["samples"])
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    return engine_record(
        facts.pop("graph"),
        facts.pop("quantization"),
        result,
        calibration_source=source,
        inference_precision=str(precision.get_type_name() if hasattr(precision, "get_type_name") else precision),
        **facts,
    )
