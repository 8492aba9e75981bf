"""`python -m loadtest.bench`: capacity benchmark, four ways, same model and same texts.

    python -m loadtest.bench --model-dir artifacts/model --checkpoint artifacts/checkpoint \
        [--duration-s 20] [--max-steps 6] [--texts 1000] [--quick] [--output-dir docs]

1. ceiling: the server's own OnnxRunner (TextEncoder + ONNX Runtime, same thread settings)
   in a tight loop over length-sorted batches (sizes 1, 4, 8 and --max-batch-size; the best
   counts); no HTTP, no queue;
2. `python -m server` with dynamic batching: the highest open-loop (Poisson) request rate
   with p95 <= --sla-p95-ms and errors <= --max-error-rate, then p50/p95/p99 at 50% and 80%;
3. the same server with --max-batch-size 1 (batching off), same search;
4. loadtest.torch_baseline: PyTorch eager, one request at a time, same search.
Each request carries one review, so requests/s = texts/s. Servers run as subprocesses on
free 127.0.0.1 ports; the load generator runs in this process, and its CPU use is measured
per step (and both sides can be pinned with --server-cpus / --client-cpus).
Writes <output-dir>/BENCHMARKS.md and benchmarks.json; server logs go to --log-dir.
"""
from __future__ import annotations

import os

# As the server does, before `tokenizers` loads: the ceiling must run with its settings.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import itertools  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, fields  # noqa: E402
from pathlib import Path  # noqa: E402

import aiohttp  # noqa: E402

from loadtest.bench_report import machine_info, write_report  # noqa: E402
from loadtest.openloop import (  # noqa: E402
    capacity, closed_loop_throughput, next_rate, payloads, run_step, wait_for_quiet,
)
from loadtest.procs import ServedProcess, parse_cpus  # noqa: E402
from loadtest.texts import DEFAULT_DATA_DIR, load_texts  # noqa: E402

_HELP = {
    "model_dir": "exporter's model directory (served by configurations 1-3)",
    "checkpoint": "trainer checkpoint of the same model (served by the PyTorch baseline, 4)",
    "texts": "reviews loaded and sent, the same for every configuration",
    "data_dir": "directory with test.parquet; generated look-alike reviews when absent",
    "max_batch_size": "server --max-batch-size for configuration 2 (0: the server's default)",
    "intra_op_threads": "ONNX Runtime intra-op threads for 1-3 (0: the server's default, physical cores)",
    "torch_threads": "torch threads for the baseline (0: the same as ONNX Runtime's)",
    "torch_device": "torch device for the baseline: cpu or cuda",
    "duration_s": "seconds per open-loop step (longer at low rates: each step sends >= 40 requests)",
    "max_steps": "open-loop steps per configuration's rate search",
    "probe_s": "seconds of the closed-loop probe that seeds each search",
    "ceiling_s": "seconds per batch size in the ceiling measurement",
    "probe_concurrency": "clients in the closed-loop probe",
    "sla_p95_ms": "p95 latency a rate must meet, ms",
    "max_error_rate": "largest share of failed requests a rate may have",
    "timeout_s": "client timeout per request (a timeout counts as an error)",
    "max_other_cpu": "a step missing the SLA while other processes kept more than this many cores busy is run again",
    "retries": "most such re-runs per configuration",
    "quiet_wait_s": "before each step, wait up to this long for other processes to use <= --max-other-cpu cores",
    "server_cpus": "pin served processes (and the ceiling) to these CPUs, e.g. 0 or 0-1 (default: no pinning)",
    "client_cpus": "pin the load generator to these CPUs (default: no pinning)",
    "server_args": "extra flags for python -m server, one quoted string",
    "skip": "comma list of configurations to leave out: batch1, torch",
    "output_dir": "where BENCHMARKS.md and benchmarks.json go",
    "log_dir": "where the served processes' logs go",
    "seed": "seed for review order and arrival times",
}
QUICK = {"texts": 96, "duration_s": 4.0, "max_steps": 3, "probe_s": 2.0, "ceiling_s": 2.0, "quiet_wait_s": 5.0}


@dataclass(frozen=True)
class BenchConfig:
    model_dir: Path
    checkpoint: Path
    texts: int = 1000
    data_dir: str = DEFAULT_DATA_DIR
    max_batch_size: int = 0  # 0: the server's own default (server.config.ServerConfig)
    intra_op_threads: int = 0
    torch_threads: int = 0
    torch_device: str = "cpu"
    duration_s: float = 20.0
    max_steps: int = 6
    probe_s: float = 5.0
    ceiling_s: float = 10.0
    probe_concurrency: int = 32
    sla_p95_ms: float = 200.0
    max_error_rate: float = 0.01
    timeout_s: float = 5.0
    max_other_cpu: float = 0.3
    retries: int = 3
    quiet_wait_s: float = 60.0
    server_cpus: str = ""
    client_cpus: str = ""
    server_args: str = ""
    skip: str = ""
    output_dir: Path = Path("docs")
    log_dir: Path = Path("reports/bench")
    quick: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_size == 0:
            from server.config import ServerConfig

            object.__setattr__(self, "max_batch_size", ServerConfig.max_batch_size)
        if self.retries < 0 or self.max_other_cpu < 0 or self.quiet_wait_s < 0:
            raise ValueError("--retries, --max-other-cpu and --quiet-wait-s must be >= 0")
        for name in ("texts", "max_batch_size", "max_steps", "probe_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("duration_s", "probe_s", "ceiling_s", "sla_p95_ms", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"--max-error-rate must be within [0, 1], got {self.max_error_rate}")
        unknown = set(self.skipped) - {"batch1", "torch"}
        if unknown:
            raise ValueError(f"--skip takes batch1 and/or torch, got {', '.join(sorted(unknown))}")
        parse_cpus(self.server_cpus), parse_cpus(self.client_cpus)  # raise early on a bad list

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(s for s in self.skip.split(",") if s)


def ceiling_batch_sizes(max_batch_size: int) -> list[int]:
    return sorted({1, 4, 8, max_batch_size} & set(range(1, max_batch_size + 1)))


def measure_ceiling(config: BenchConfig, texts: list[str]) -> dict:
    """Texts/s of tokenize + pad + ONNX Runtime alone, per batch size; the ceiling is the best.

    Batches are length-sorted (as the server groups similar lengths), then taken in a
    shuffled order until the time is up, so a time-bounded run is not biased to short texts.
    Several sizes, not only --max-batch-size: on a small CPU a bigger batch is not always
    faster per text, and the ceiling must be the best the runtime can do.
    """
    from server.runner import OnnxRunner

    cpus = parse_cpus(config.server_cpus)
    if cpus:
        os.sched_setaffinity(0, cpus)  # before the session: its threads inherit this set
    runner = OnnxRunner(config.model_dir, intra_op_threads=config.intra_op_threads)
    runner.warmup()
    order = sorted(range(len(texts)), key=lambda i: len(runner.encode([texts[i]])[0]))
    seconds = config.ceiling_s  # per batch size
    by_size = {}
    for size in ceiling_batch_sizes(config.max_batch_size):
        asyncio.run(wait_for_quiet(config.max_other_cpu, config.quiet_wait_s))
        batches = [[texts[i] for i in order[k:k + size]] for k in range(0, len(order), size)]
        random.Random(config.seed).shuffle(batches)
        done = tokens = padded = 0
        start = time.perf_counter()
        for batch in itertools.cycle(batches):
            seqs = runner.encode(batch)
            runner.predict(seqs)
            done += len(batch)
            tokens += sum(len(x) for x in seqs)
            padded += len(seqs) * max(len(x) for x in seqs)
            if time.perf_counter() - start >= seconds:
                break
        elapsed = time.perf_counter() - start
        by_size[size] = {"texts_per_s": done / elapsed, "texts": done, "seconds": elapsed,
                         "mean_tokens": tokens / done, "padding_ratio": 1 - tokens / padded}
        print(f"[ceiling] batch {size}: {done / elapsed:.1f} texts/s", flush=True)
    best = max(by_size, key=lambda k: by_size[k]["texts_per_s"])
    info = runner.info
    del runner
    if parse_cpus(config.client_cpus):
        os.sched_setaffinity(0, parse_cpus(config.client_cpus))
    elif cpus:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return {"texts_per_s": by_size[best]["texts_per_s"], "best_batch_size": best,
            "mean_tokens": by_size[best]["mean_tokens"], "by_batch_size": by_size, "runner": info}


async def search(name: str, proc: ServedProcess, bodies: list[bytes], config: BenchConfig,
                 extra_fractions: tuple[float, ...] = ()) -> dict:
    """Probe closed-loop throughput, then bisect the open-loop rate that meets the SLA."""
    url = proc.url + "/v1/predict"
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await closed_loop_throughput(session, url, bodies, 4, min(2.0, config.probe_s))  # warm-up
        bound = await closed_loop_throughput(session, url, bodies, config.probe_concurrency, config.probe_s)
        print(f"[{name}] closed-loop throughput ({config.probe_concurrency} clients): {bound:.1f} req/s", flush=True)
        if bound <= 0:
            return {"closed_loop_rps": 0.0, "capacity_rps": 0.0, "capacity_is_lower_bound": False,
                    "at_capacity": None, "at_fraction": {}, "steps": [],
                    "error": f"no successful answer in the closed-loop probe (see {proc.log_path})"}
        history, steps, retries = [], [], [config.retries]

        async def measure(rate: float, **tags) -> bool:
            """One step at `rate`; a miss while other processes kept the CPUs busy is run again."""
            while True:
                await wait_for_quiet(config.max_other_cpu, config.quiet_wait_s, proc.cpu_seconds)
                step = await run_step(session, url, bodies, rate, config.duration_s, seed=config.seed + len(steps),
                                      timeout_s=config.timeout_s, server_cpu=proc.cpu_seconds)
                await asyncio.sleep(0.5)  # every answer is in; let the server settle before the next rate
                ok = step.meets(config.sla_p95_ms, config.max_error_rate)
                disturbed = not ok and retries[0] > 0 and (step.other_cpu_cores or 0.0) > config.max_other_cpu
                steps.append({**step.to_dict(), "meets_sla": ok, "discarded": disturbed, **tags})
                print(f"[{name}] {_describe(step)} -> {'meets' if ok else 'misses'} SLA"
                      + (" (other processes busy: run again)" if disturbed else ""), flush=True)
                if not disturbed:
                    return ok
                retries[0] -= 1

        rate = next_rate(history, start=0.7 * bound)
        while rate is not None and len(history) < config.max_steps:
            history.append((rate, await measure(rate)))
            rate = next_rate(history, start=0.7 * bound)
        cap = capacity(history)
        at = {}
        for fraction in extra_fractions if cap > 0 else ():
            await measure(fraction * cap, fraction=fraction)
            at[f"{fraction:.0%}"] = steps[-1]
    best = next((s for s in steps if s["rate"] == cap and not s["discarded"] and "fraction" not in s), None)
    # Out of steps before a rate failed: the true capacity is higher than the one reported.
    lower_bound = bool(history) and all(ok for _, ok in history)
    return {"closed_loop_rps": bound, "capacity_rps": cap, "capacity_is_lower_bound": lower_bound,
            "at_capacity": best, "at_fraction": at, "steps": steps}


def _describe(step) -> str:
    other = "n/a" if step.other_cpu_cores is None else f"{step.other_cpu_cores:.2f}"
    return (f"rate {step.rate:.1f}/s: sent {step.sent}, p50 {step.p50_ms:.0f} ms, p95 {step.p95_ms:.0f} ms, "
            f"p99 {step.p99_ms:.0f} ms, errors {step.error_rate:.1%}, CPU cores: generator "
            f"{step.client_cpu_cores:.2f}, other processes {other}")


def run(config: BenchConfig, argv: list[str]) -> int:
    texts, source = load_texts(config.texts, config.data_dir, seed=config.seed)
    bodies = payloads(texts)
    info = machine_info()
    print(f"bench: {len(texts)} texts ({source}); model {config.model_dir}; {info['cpu_model']}, "
          f"{info['logical_cpus']} CPUs", flush=True)
    ceiling = measure_ceiling(config, texts)
    threads = ceiling["runner"]["intra_op_threads"]
    print(f"[ceiling] {ceiling['texts_per_s']:.1f} texts/s (best: batch {ceiling['best_batch_size']}, "
          f"{threads} intra-op threads)", flush=True)
    server_cmd = [sys.executable, "-m", "server", "--model-dir", str(config.model_dir), "--host", "127.0.0.1",
                  "--intra-op-threads", str(threads), *shlex.split(config.server_args)]
    targets = [("server", server_cmd + ["--max-batch-size", str(config.max_batch_size)], (0.5, 0.8))]
    if "batch1" not in config.skipped:
        targets.append(("server_batch1", server_cmd + ["--max-batch-size", "1"], ()))
    if "torch" not in config.skipped:
        targets.append(("torch_baseline", [sys.executable, "-m", "loadtest.torch_baseline", "--checkpoint",
                                           str(config.checkpoint), "--host", "127.0.0.1", "--threads",
                                           str(config.torch_threads or threads), "--device", config.torch_device], ()))
    results = {}
    config.log_dir.mkdir(parents=True, exist_ok=True)
    for name, cmd, fractions in targets:
        with ServedProcess(cmd, config.log_dir / f"{name}.log", parse_cpus(config.server_cpus)) as proc:
            results[name] = {"command": shlex.join(cmd[1:] + ["--port", str(proc.port)]), "ready": proc.ready_body,
                             **asyncio.run(search(name, proc, bodies, config, fractions))}
    info["load_average_end"] = os.getloadavg()
    from server.config import ServerConfig

    server_defaults = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(ServerConfig()).items()}
    paths = write_report(config.output_dir, {
        "command": "python -m loadtest.bench " + shlex.join(argv),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "texts": {"count": len(texts), "source": source}, "machine": info, "ceiling": ceiling,
        "server_defaults": server_defaults, **results,
    })
    print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.splitlines()[0])
    for f in fields(BenchConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                                + "; output to reports/bench-quick unless --output-dir is given")
        elif f.name in ("model_dir", "checkpoint"):
            parser.add_argument(flag, type=Path, required=True, help=_HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str, "Path": Path}[f.type]
            default = f" (default: {f.default})" if f.default not in ("", 0) else ""
            parser.add_argument(flag, type=kind, default=None, help=_HELP[f.name] + default)
    return parser


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    defaults = {f.name: f.default for f in fields(BenchConfig) if f.name not in ("model_dir", "checkpoint")}
    if args["quick"]:
        defaults.update(QUICK, output_dir=Path("reports/bench-quick"))
    values = {k: (defaults[k] if v is None and k in defaults else v) for k, v in args.items()}
    try:
        config = BenchConfig(**values)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, what in ((config.model_dir / "model.onnx", "--model-dir"), (config.checkpoint / "config.json", "--checkpoint")):
        if not path.is_file() and not (what == "--checkpoint" and "torch" in config.skipped):
            print(f"error: {what} {path.parent} has no {path.name}", file=sys.stderr)
            return 2
    # SIGTERM unwinds like Ctrl-C, so the served processes' context managers stop them.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(config, argv)
    except KeyboardInterrupt:
        print("error: interrupted; no report written", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a served process failed to start: one line, log path included
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
