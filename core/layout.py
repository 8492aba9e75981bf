"""How a process lays its work on the machine: physical cores, the cgroup's CPU quota, the split
of cores among inference workers, and whether a model directory's graph runs on the GPU.

The server sizes its thread pools with these, and the benchmarks record the same figures beside
their numbers, so both must read the machine the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
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


def thread_layout(
    inference_workers: int = 0, intra_op_threads: int = 0, gpu: bool = False, cores: int = 0
) -> tuple[int, int]:
    """(inference workers, ONNX Runtime threads per run) of one server process with 0s resolved:
    one worker per physical core on CPU, one on a GPU (its runs share one CUDA stream, so more
    workers add no overlap: Triton's default too), and the cores split among the workers.
    `cores`: the process's share of the machine (default: every physical core)."""
    cores = cores or physical_cores()
    workers = inference_workers or (1 if gpu else cores)
    return workers, intra_op_threads or max(1, cores // workers)


# Each process on a GPU holds its own CUDA context and session (a few hundred MB of device memory
# each), and what it buys is Python's per-request work on more cores: past a handful of
# processes the GPU's own queue is the limit.
GPU_MAX_PROCESSES = 8


@dataclass(frozen=True)
class ProcessLayout:
    """How one server spreads over the machine: processes x workers x threads <= cores on a CPU."""

    processes: int
    workers: int  # inference workers per process
    threads: int  # ONNX Runtime threads per run


def auto_processes(gpu: bool, cores: int) -> int:
    """--processes 0, as measured best per device (docs/RESULTS.md, "Server processes").

    On a GPU inference is cheap and the server's own Python work per request (HTTP, JSON, the
    event loop, the tokenizer hand-off) is the limit, and it scales with processes: one per
    physical core, at most GPU_MAX_PROCESSES. On a CPU, one process: its inference workers
    already take every core, and they share one queue, where a process per core gives each
    worker a queue of its own that the kernel fills connection by connection. With the int8
    MiniLM on 2 cores the shared queue held p95 ~105 ms at 120 req/s where two processes went
    past 180 ms with refusals; only a model of well under a millisecond per text gained from
    two (5%), and such a deployment can ask for `--processes N`."""
    if gpu:
        return max(1, min(cores, GPU_MAX_PROCESSES))
    return 1


def process_layout(
    processes: int = 1, inference_workers: int = 0, intra_op_threads: int = 0, gpu: bool = False, cores: int = 0
) -> ProcessLayout:
    """Processes, workers and threads with 0s resolved. The cores (cgroup quota included) are
    split among the processes first, then among each process's workers, so that on a CPU
    processes x workers x threads never exceeds them unless asked for explicitly."""
    cores = cores or physical_cores()
    count = processes or auto_processes(gpu, cores)
    workers, threads = thread_layout(inference_workers, intra_op_threads, gpu, cores=max(1, cores // count))
    return ProcessLayout(count, workers, threads)


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
