"""int8 dynamic quantization for the CPU target, fp16 conversion for the GPU target."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path


def detect_isa(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """The optimum quantization preset matching this CPU's integer dot-product support.

    VNNI does the u8*s8 dot products in one instruction; without it ORT's avx2/avx512
    kernels risk u8*s8 saturation unless `reduce_range` is on, which the avx2 preset sets.
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    return "avx2"


def quantization_config(
    isa: str, per_channel: bool, nodes_to_exclude: list[str] | None = None, exclude_ops: tuple[str, ...] = ()
):
    from optimum.onnxruntime.configuration import (
        ORT_DEFAULT_OPS_DYNAMIC_QUANTIZATION,
        AutoQuantizationConfig,
    )

    preset = {
        "avx512_vnni": AutoQuantizationConfig.avx512_vnni,
        "avx512": AutoQuantizationConfig.avx512,
        "avx2": AutoQuantizationConfig.avx2,
        "arm64": AutoQuantizationConfig.arm64,
    }[isa]
    ops = [op for op in ORT_DEFAULT_OPS_DYNAMIC_QUANTIZATION if op not in exclude_ops]
    return preset(
        is_static=False, per_channel=per_channel, nodes_to_exclude=nodes_to_exclude or [], operators_to_quantize=ops
    )


def quantize_int8(
    src: Path,
    dst: Path,
    isa: str,
    per_channel: bool = True,
    nodes_to_exclude: list[str] | None = None,
    exclude_ops: tuple[str, ...] = (),
) -> Path:
    """Dynamic int8 quantization of `src` (a plain, unfused fp32 graph) into `dst`.

    Dynamic: activations are scaled per batch at run time, so no calibration set is
    needed and long reviews do not clip against ranges fitted on short ones.
    """
    from optimum.onnxruntime import ORTQuantizer

    src, dst = Path(src), Path(dst)
    quantizer = ORTQuantizer.from_pretrained(src.parent, file_name=src.name)
    work = dst.parent / (dst.stem + "_q")
    out = quantizer.quantize(
        quantization_config=quantization_config(isa, per_channel, nodes_to_exclude, exclude_ops), save_dir=work
    )
    produced = Path(out) / f"{src.stem}_quantized.onnx"
    if not produced.is_file():
        candidates = sorted(Path(out).glob("*.onnx"))
        if not candidates:
            raise RuntimeError(f"ORTQuantizer wrote no .onnx file into {out}")
        produced = candidates[0]
    shutil.move(str(produced), dst)
    shutil.rmtree(work, ignore_errors=True)
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute for the CUDA EP; inputs/outputs stay int64/fp32 so the
    server feeds and reads the same tensors for every target."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(dst))
    return Path(dst)
