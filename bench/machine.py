"""The machine a benchmark ran on, for its report: CPU, memory, GPU, library versions, commit, load."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    import numpy
    import onnxruntime

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from core.layout import physical_cores

        cores = physical_cores()
    except ImportError:
        cores = None
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20  # MemTotal, kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_model": cpu_model,
        "cpu_flags": cpu_flags(),
        "openvino": _openvino_version(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": cores,
        "memory_gib": round(mem, 1) if mem else None,
        "gpu": _gpu_name(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_average_start": os.getloadavg(),
    }


# The instruction sets int8 and bf16 inference kernels are chosen by (oneDNN, MLAS, OpenVINO):
# VNNI and AMX make static int8 pay (issue 20's Xeon); without AVX-512 the int8 paths differ.
ENGINE_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of ENGINE_FLAGS this CPU has (/proc/cpuinfo; none where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [flag for flag in ENGINE_FLAGS if flag in have]
    except OSError:
        pass
    return []


def _openvino_version() -> str | None:
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino

    return str(openvino.__version__)


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _git_commit() -> str | None:
    """HEAD's short hash, with "+changes" when the tracked files differ from it (what ran was not HEAD)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() or None
        return f"{commit}+changes" if commit and dirty.stdout.strip() else commit
    except (OSError, subprocess.TimeoutExpired):
        return None
