"""The benchmark's settings: one frozen dataclass, one `--flag` per field (core.cli).

`--quick` is a smoke run: it swaps in the QUICK defaults (flags given on the command line
still win) and writes to reports/bench-quick unless --output-dir is given.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import parse_cpus
from core.cli import opt
from loadtest.texts import DEFAULT_DATA_DIR

PROG = "python -m bench"
SKIPPABLE = ("in_process", "single_worker", "batch1", "ort", "torch", "fastapi", "overhead")
QUICK: dict[str, Any] = {
    "texts": 96,
    "duration_s": 4.0,
    "max_steps": 3,
    "rounds": 1,
    "probe_s": 2.0,
    "ceiling_s": 2.0,
    "quiet_wait_s": 5.0,
    "overload_step_s": 4.0,
    "overhead_s": 3.0,
}
QUICK_OUTPUT_DIR = Path("reports/bench-quick")
# --checkpoint left out: recorded as "-" in the report. Only the PyTorch baseline serves it.
NO_CHECKPOINT = Path("-")


@dataclass(frozen=True)
class BenchConfig:
    """Capacity benchmark, four ways, same model and same texts."""

    model_dir: Path = field(metadata=opt("exporter's model directory (served by configurations 1-3)"))
    checkpoint: Path = field(
        default=NO_CHECKPOINT,
        metadata=opt(
            "trainer checkpoint of the same model (served by the PyTorch baseline, 4; not needed with "
            "--overload or --skip torch)"
        ),
    )
    texts: int = field(default=1000, metadata=opt("reviews loaded and sent, the same for every configuration"))
    data_dir: str = field(
        default=DEFAULT_DATA_DIR, metadata=opt("directory with test.parquet; generated look-alike reviews when absent")
    )
    # 0: the server's own default (server.config.ServerConfig), filled in by __post_init__.
    max_batch_size: int = field(
        default=0, metadata=opt("server --max-batch-size for configuration 2 (0: the server's default)")
    )
    inference_workers: int = field(
        default=0, metadata=opt("server --inference-workers for 2 and 3 (0: the server's default, physical cores)")
    )
    intra_op_threads: int = field(
        default=0,
        metadata=opt("server --intra-op-threads for 2 and 3 (0: the server's default, physical cores / workers)"),
    )
    torch_threads: int = field(
        default=0, metadata=opt("torch threads for the baseline (0: physical cores, torch's default)")
    )
    torch_device: str = field(default="cpu", metadata=opt("torch device for the baseline: cpu or cuda"))
    duration_s: float = field(
        default=30.0,
        metadata=opt("seconds per open-loop step (longer at low rates: each step sends >= 40 requests)"),
    )
    max_steps: int = field(default=6, metadata=opt("open-loop steps per configuration's rate search"))
    # One search on this shared box moves 10-20% with the machine's speed (docs/RESULTS.md):
    # the median of three rounds, each against the ceiling run beside it, is what is reported.
    rounds: int = field(
        default=3,
        metadata=opt(
            "rate searches of the server's default configuration (2), each on a fresh server between two runs "
            "of the ceiling's configuration; its capacity and 2/1 are the medians over rounds"
        ),
    )
    probe_s: float = field(default=5.0, metadata=opt("seconds of the closed-loop probe that seeds each search"))
    ceiling_s: float = field(default=10.0, metadata=opt("seconds per batch size in the ceiling measurement"))
    probe_concurrency: int = field(default=32, metadata=opt("clients in the closed-loop probe"))
    sla_p95_ms: float = field(default=200.0, metadata=opt("p95 latency a rate must meet, ms"))
    max_error_rate: float = field(default=0.01, metadata=opt("largest share of failed requests a rate may have"))
    timeout_s: float = field(default=5.0, metadata=opt("client timeout per request (a timeout counts as an error)"))
    max_other_cpu: float = field(
        default=0.3,
        metadata=opt("a step missing the SLA while other processes kept more than this many cores busy is run again"),
    )
    retries: int = field(default=3, metadata=opt("most such re-runs per configuration"))
    quiet_wait_s: float = field(
        default=60.0,
        metadata=opt("before each step, wait up to this long for other processes to use <= --max-other-cpu cores"),
    )
    server_cpus: str = field(
        default="",
        metadata=opt("pin served processes (and the ceiling) to these CPUs, e.g. 0 or 0-1 (default: no pinning)"),
    )
    client_cpus: str = field(default="", metadata=opt("pin the load generator to these CPUs (default: no pinning)"))
    server_args: str = field(default="", metadata=opt("extra flags for python -m server, one quoted string"))
    skip: str = field(default="", metadata=opt("comma list of configurations to leave out: " + ", ".join(SKIPPABLE)))
    output_dir: Path = field(default=Path("docs"), metadata=opt("where BENCHMARKS.md and benchmarks.json go"))
    log_dir: Path = field(default=Path("reports/bench"), metadata=opt("where the served processes' logs go"))
    quick: bool = field(
        default=False,
        metadata=opt(
            "smoke run: "
            + ", ".join(f"{k}={v}" for k, v in QUICK.items())
            + f"; output to {QUICK_OUTPUT_DIR} unless --output-dir is given"
        ),
    )
    seed: int = field(default=0, metadata=opt("seed for review order and arrival times"))
    overload: bool = field(
        default=False,
        metadata=opt(
            "run the overload benchmark instead (bench/overload.py): the server with its latency budget on "
            "and off, at 0.8x, 1.5x, 2x and 5x of its capacity, then a recovery step at 0.5x"
        ),
    )
    overload_step_s: float = field(default=30.0, metadata=opt("seconds per overload step"))
    overhead_s: float = field(
        default=15.0,
        metadata=opt(
            "seconds of each closed-loop run of the overhead row (bench/overhead.py: a tiny random model, "
            "one process vs --processes 0 vs FastAPI + uvicorn)"
        ),
    )
    overhead_concurrency: int = field(default=32, metadata=opt("connections in the overhead row's closed loop"))

    def __post_init__(self) -> None:
        if self.checkpoint == NO_CHECKPOINT and not self.overload and "torch" not in self.skipped:
            raise ValueError(
                "--checkpoint is required (the PyTorch baseline serves it), unless --overload or --skip torch"
            )
        if self.max_batch_size == 0:
            from server.config import ServerConfig

            object.__setattr__(self, "max_batch_size", ServerConfig.max_batch_size)
        if self.retries < 0 or self.max_other_cpu < 0 or self.quiet_wait_s < 0:
            raise ValueError("--retries, --max-other-cpu and --quiet-wait-s must be >= 0")
        if self.inference_workers < 0 or self.intra_op_threads < 0 or self.torch_threads < 0:
            raise ValueError("--inference-workers, --intra-op-threads and --torch-threads must be >= 0")
        for name in ("texts", "max_batch_size", "max_steps", "rounds", "probe_concurrency", "overhead_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("duration_s", "probe_s", "ceiling_s", "sla_p95_ms", "timeout_s", "overload_step_s", "overhead_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"--max-error-rate must be within [0, 1], got {self.max_error_rate}")
        unknown = set(self.skipped) - set(SKIPPABLE)
        if unknown:
            raise ValueError(f"--skip takes {', '.join(SKIPPABLE)}, got {', '.join(sorted(unknown))}")
        parse_cpus(self.server_cpus), parse_cpus(self.client_cpus)  # raise early on a bad list

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(s for s in self.skip.split(",") if s)

    def record(self) -> dict[str, Any]:
        """The settings as the report's "config" (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def command_line(argv: list[str]) -> str:
    """The command that ran, as the report's "command" field shows it."""
    return f"{PROG} " + shlex.join(argv)
