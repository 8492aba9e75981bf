"""Transformer graph fusions, and the order that lets int8 quantization follow them.

Levels mirror optimum's names:
  O1  ONNX Runtime's basic, provider-independent rewrites (constant folding, dead nodes)
  O2  + transformer fusions: Attention, EmbedLayerNormalization, SkipLayerNormalization,
      BiasGelu (onnxruntime.transformers.optimizer)
  O3  + GELU approximated by FastGelu (tanh form; changes numerics slightly)

Order: fuse the fp32 graph, then quantize. Quantizing an ORTOptimizer-fused graph fails on
this stack ("Unable to find data type for weight_name ...") because ONNX shape inference
does not know the com.microsoft ops the fusions introduce; running ONNX Runtime's symbolic
shape inference first types every tensor, and the quantizer then turns Attention into
QAttention and EmbedLayerNormalization into QEmbedLayerNormalization. The reverse order
(quantize, then fuse) leaves attention unfused: the fusion patterns do not match
MatMulInteger. Extended, provider-specific rewrites are left to the serving session
(ORT_ENABLE_ALL), which applies them for the hardware it actually runs on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from exporter import quantize

# optimum maps these architectures onto ORT's BERT fusion patterns
MODEL_TYPES = {
    "bert": "bert",
    "distilbert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "albert": "bert",
    "deberta-v2": "bert",
}


def fuse(src: Path, dst: Path, model_type: str, level: str, use_gpu: bool = False) -> dict:
    """Write the `level`-optimized fp32 graph to `dst`; returns fused-operator counts."""
    src, dst = Path(src), Path(dst)
    if level == "none":
        shutil.copyfile(src, dst)
        return {}
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if level == "O1":
        model = optimize_model(str(src), opt_level=1, only_onnxruntime=True, use_gpu=use_gpu)
        model.save_model_to_file(str(dst))
        return {}
    ort_type = MODEL_TYPES.get(model_type)
    if ort_type is None:
        raise ValueError(
            f"--optimize {level}: no fusion patterns for model_type {model_type!r}; use --optimize O1 or none"
        )
    options = FusionOptions(ort_type)
    options.enable_gelu_approximation = level == "O3"
    # num_heads/hidden_size 0: detected from the graph, so any BERT-like shape works
    model = optimize_model(
        str(src),
        model_type=ort_type,
        num_heads=0,
        hidden_size=0,
        optimization_options=options,
        opt_level=0,
        use_gpu=use_gpu,
    )
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def infer_shapes(src: Path, dst: Path) -> Path:
    """Type every tensor, contrib ops included, so the quantizer can find weight types."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True)
    onnx.save(model, str(dst))
    return Path(dst)


def optimize_then_quantize(
    src: Path, dst: Path, model_type: str, level: str, isa: str, per_channel: bool, quantize_embeddings: bool = True
) -> list[str]:
    """fp32 export -> fusions -> shape inference -> dynamic int8. Returns the steps taken."""
    src = Path(src)
    steps = []
    fused = src.parent / "fused.onnx"  # beside the export: ORTQuantizer reads its config.json
    stats = fuse(src, fused, model_type, level, use_gpu=False)
    if level != "none":
        steps.append(f"fusions {level} {stats}" if stats else f"fusions {level}")
        infer_shapes(fused, fused)
        steps.append("symbolic shape inference")
    exclude_ops = () if quantize_embeddings else ("Gather", "EmbedLayerNormalization")
    quantize.quantize_int8(fused, Path(dst), isa, per_channel, exclude_ops=exclude_ops)
    steps.append(
        f"dynamic int8 ({isa} preset, per_channel={per_channel}, "
        f"embeddings {'int8' if quantize_embeddings else 'fp32'})"
    )
    return steps
