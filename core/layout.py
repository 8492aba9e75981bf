"""How a process lays its work on the machine: physical cores, the cgroup's CPU quota, the split
of cores among inference workers, and whether a model directory's graph runs on the GPU.

The server sizes its thread pools with these, and the benchmarks record the same figures beside
their numbers, so both must read the machine the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.modeldir import read_model_dir

CUDA_PROVIDER = "CUDAExecutionProvider"


def physical_cores() -> int:
    """Physical cores this process may use: SMT siblings counted once, capped by a cgroup
    CPU quota (a container limited to 2 CPUs on a 64-core node must not start 32 threads)."""
    try:
        available = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in available:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(path.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    quota = cgroup_cpu_quota()
    count = len(cores) if quota is None else min(len(cores), max(1, int(quota + 0.5)))
    return max(1, count)


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by cgroup v2 `cpu.max` (or v1 cfs quota); None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def thread_layout(inference_workers: int = 0, intra_op_threads: int = 0, gpu: bool = False) -> tuple[int, int]:
    """(inference workers, ONNX Runtime threads per run) with 0s resolved: one worker per
    physical core on CPU, one on a GPU (its runs share one CUDA stream, so more workers add
    no overlap: Triton's default too), and the cores split among the workers."""
    cores = physical_cores()
    workers = inference_workers or (1 if gpu else cores)
    return workers, intra_op_threads or max(1, cores // workers)


def uses_cuda(providers: Iterable[str]) -> bool:
    """Whether a session with these providers (as ONNX Runtime lists them) runs on the GPU."""
    return CUDA_PROVIDER in providers


def cuda_wanted(serving: dict[str, Any]) -> bool:
    """A model directory's graph goes on the GPU when it was exported for one (`serving`
    block of its config.json) and this ONNX Runtime has the CUDA provider."""
    import onnxruntime as ort

    return serving.get("target") == "gpu" and uses_cuda(ort.get_available_providers())


def model_on_gpu(model_dir: str | Path) -> bool:
    """Whether the server will run this model directory on the GPU (ModelDirError if broken)."""
    return cuda_wanted(read_model_dir(model_dir).serving)
