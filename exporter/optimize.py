"""Graph fusions and their order relative to int8 quantization."""
from __future__ import annotations

import shutil
from pathlib import Path

from exporter import quantize


def fuse(src: Path, dst: Path, hf_config, level: str, use_gpu: bool = False) -> Path:
    if level == "none":
        shutil.copyfile(src, dst)
        return Path(dst)
    raise NotImplementedError(f"--optimize {level} not implemented yet")


def optimize_then_quantize(src: Path, dst: Path, hf_config, level: str, isa: str, per_channel: bool) -> list[str]:
    if level != "none":
        raise NotImplementedError(f"--optimize {level} with int8 not implemented yet")
    quantize.quantize_int8(src, dst, isa, per_channel)
    return [f"dynamic int8 ({isa}, per_channel={per_channel})"]
