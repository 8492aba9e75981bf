"""`python -m bench`: the capacity benchmark, four ways, same model and same texts.

    python -m bench --model-dir artifacts/model --checkpoint artifacts/checkpoint \
        [--duration-s 20] [--max-steps 6] [--texts 1000] [--quick] [--output-dir docs]
    python -m bench --overload --model-dir artifacts/model ...   (bench/overload.py)

1. ceiling: the server's own OnnxRunner (TextEncoder + ONNX Runtime) in a tight loop over
   length-sorted batches, for every thread layout and batch size (bench/ceiling.py);
2. `python -m server` with dynamic batching: the highest open-loop (Poisson) request rate
   with p95 <= --sla-p95-ms and errors <= --max-error-rate, then p50/p95/p99 at 50% and 80%,
   --rounds times (bench/capacity.py, searched by bench/search.py);
2c. the server's batcher and inference workers in this process, without HTTP (bench/inprocess.py);
2b. the same server with one inference worker using every core;
3. the same server with --max-batch-size 1 (batching off);
4. bench.torch_baseline: PyTorch eager, one request at a time;
5. FastAPI + uvicorn, a worker process per core, no batching;
then the overhead row: a tiny random model, closed loop, one process vs a process per core vs
FastAPI + uvicorn (bench/overhead.py).
Each request carries one review, so requests/s = texts/s. Servers run as subprocesses on
free 127.0.0.1 ports; the load generator runs in this process (bench/httpclient.py: a
lean keep-alive client, so it takes little of the CPUs the server needs), and its CPU use
is measured per step (both sides can be pinned with --server-cpus / --client-cpus).
Writes <output-dir>/BENCHMARKS.md and benchmarks.json; server logs go to --log-dir.
"""

from __future__ import annotations

import os

# As the server does, before `tokenizers` loads: the ceiling must run with its settings.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import signal
import sys
from dataclasses import fields
from types import FrameType

from bench.capacity import run_capacity
from bench.config import PROG, QUICK, QUICK_OUTPUT_DIR, BenchConfig
from bench.overload import run_overload_bench
from core import cli


def build_parser() -> cli.OneLineParser:
    return cli.build_parser(BenchConfig, prog=PROG)


def parse_config(argv: list[str]) -> BenchConfig:
    """The settings from `argv`; with --quick, QUICK's values stand in for the defaults (a flag
    given on the command line still wins). A value the settings refuse raises ValueError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK, output_dir=QUICK_OUTPUT_DIR)
        args = parser.parse_args(argv)
    return BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_config(argv)
    except ValueError as exc:
        return cli.fail("", str(exc))
    for path, what in (
        (config.model_dir / "model.onnx", "--model-dir"),
        (config.checkpoint / "config.json", "--checkpoint"),
    ):
        unused = what == "--checkpoint" and ("torch" in config.skipped or config.overload)
        if not path.is_file() and not unused:
            return cli.fail("", f"{what} {path.parent} has no {path.name}")
    # SIGTERM unwinds like Ctrl-C, so the served processes' context managers stop them.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_overload_bench(config, argv) if config.overload else run_capacity(config, argv)
    except KeyboardInterrupt:
        return cli.fail("", "interrupted; no report written", code=130)
    except RuntimeError as exc:  # a served process failed to start: one line, log path included
        return cli.fail("", str(exc), code=1)


if __name__ == "__main__":
    sys.exit(main())
