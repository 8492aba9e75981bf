"""`python -m loadtest.bench`: capacity benchmark, four ways, same model and same texts.

    python -m loadtest.bench --model-dir artifacts/model --checkpoint artifacts/checkpoint \
        [--duration-s 20] [--max-steps 6] [--texts 1000] [--quick] [--output-dir docs]
    python -m loadtest.bench --overload --model-dir artifacts/model ...   (loadtest/overload.py)

1. ceiling: the server's own OnnxRunner (TextEncoder + ONNX Runtime) in a tight loop over
   length-sorted batches, for every thread layout (1 stream x all cores, one stream per core
   x 1 thread, and the server's) and batch size (1, 4, 8, --max-batch-size); the best one is
   run again before and after each round of the server's search, and the median of all its
   runs is the ceiling; no HTTP, no queue;
2. `python -m server` with dynamic batching: the highest open-loop (Poisson) request rate
   with p95 <= --sla-p95-ms and errors <= --max-error-rate, then p50/p95/p99 at 50% and 80%;
   --rounds times, each on a fresh server between two runs of the ceiling's configuration:
   its capacity is the median round, and 2/1 the median of the rounds' own ratios;
2c. the server's batcher and inference workers in this process, with the server's settings,
   without HTTP (loadtest/inprocess.py): splits 2's gap to 1 into queueing and HTTP;
2b. the same server with one inference worker using every core (the layout before
   inference workers existed), same search;
3. the same server with --max-batch-size 1 (batching off), same search;
4. loadtest.torch_baseline: PyTorch eager, one request at a time, same search.
Each request carries one review, so requests/s = texts/s. Servers run as subprocesses on
free 127.0.0.1 ports; the load generator runs in this process (loadtest/httpclient.py: a
lean keep-alive client, so it takes little of the CPUs the server needs), and its CPU use
is measured per step (both sides can be pinned with --server-cpus / --client-cpus).
Writes <output-dir>/BENCHMARKS.md and benchmarks.json; server logs go to --log-dir.
"""

from __future__ import annotations

import os

# As the server does, before `tokenizers` loads: the ceiling must run with its settings.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse
import asyncio
import contextlib
import itertools
import random
import shlex
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from loadtest.bench_report import machine_info, write_report
from loadtest.httpclient import LeanClient
from loadtest.inprocess import InProcessServer
from loadtest.openloop import (
    SEARCH_START,
    capacity,
    closed_loop,
    closed_loop_throughput,
    next_rate,
    open_loop_step,
    payloads,
    run_step,
    wait_for_quiet,
)
from loadtest.overload import run_overload
from loadtest.overload_report import write_overload_report
from loadtest.procs import ServedProcess, parse_cpus
from loadtest.queueing import bound_fraction, searched_fractions
from loadtest.texts import DEFAULT_DATA_DIR, load_texts
from server.config import parse_config as parse_server_config

_HELP = {
    "model_dir": "exporter's model directory (served by configurations 1-3)",
    "checkpoint": "trainer checkpoint of the same model (served by the PyTorch baseline, 4; not needed with "
    "--overload or --skip torch)",
    "texts": "reviews loaded and sent, the same for every configuration",
    "data_dir": "directory with test.parquet; generated look-alike reviews when absent",
    "max_batch_size": "server --max-batch-size for configuration 2 (0: the server's default)",
    "inference_workers": "server --inference-workers for 2 and 3 (0: the server's default, physical cores)",
    "intra_op_threads": "server --intra-op-threads for 2 and 3 (0: the server's default, physical cores / workers)",
    "torch_threads": "torch threads for the baseline (0: physical cores, torch's default)",
    "torch_device": "torch device for the baseline: cpu or cuda",
    "duration_s": "seconds per open-loop step (longer at low rates: each step sends >= 40 requests)",
    "max_steps": "open-loop steps per configuration's rate search",
    "rounds": "rate searches of the server's default configuration (2), each on a fresh server between two runs "
    "of the ceiling's configuration; its capacity and 2/1 are the medians over rounds",
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
    "skip": "comma list of configurations to leave out: in_process, single_worker, batch1, torch",
    "output_dir": "where BENCHMARKS.md and benchmarks.json go",
    "log_dir": "where the served processes' logs go",
    "seed": "seed for review order and arrival times",
    "overload": "run the overload benchmark instead (loadtest/overload.py): the server with its latency budget on "
    "and off, at 0.8x, 1.5x, 2x and 5x of its capacity, then a recovery step at 0.5x",
    "overload_step_s": "seconds per overload step",
}
SKIPPABLE = ("in_process", "single_worker", "batch1", "torch")
QUICK = {
    "texts": 96,
    "duration_s": 4.0,
    "max_steps": 3,
    "rounds": 1,
    "probe_s": 2.0,
    "ceiling_s": 2.0,
    "quiet_wait_s": 5.0,
    "overload_step_s": 4.0,
}


@dataclass(frozen=True)
class BenchConfig:
    model_dir: Path
    checkpoint: Path
    texts: int = 1000
    data_dir: str = DEFAULT_DATA_DIR
    max_batch_size: int = 0  # 0: the server's own default (server.config.ServerConfig)
    inference_workers: int = 0
    intra_op_threads: int = 0
    torch_threads: int = 0
    torch_device: str = "cpu"
    duration_s: float = 30.0
    max_steps: int = 6
    # One search on this shared box moves 10-20% with the machine's speed (docs/RESULTS.md):
    # the median of three rounds, each against the ceiling run beside it, is what is reported.
    rounds: int = 3
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
    overload: bool = False
    overload_step_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_batch_size == 0:
            from server.config import ServerConfig

            object.__setattr__(self, "max_batch_size", ServerConfig.max_batch_size)
        if self.retries < 0 or self.max_other_cpu < 0 or self.quiet_wait_s < 0:
            raise ValueError("--retries, --max-other-cpu and --quiet-wait-s must be >= 0")
        if self.inference_workers < 0 or self.intra_op_threads < 0 or self.torch_threads < 0:
            raise ValueError("--inference-workers, --intra-op-threads and --torch-threads must be >= 0")
        for name in ("texts", "max_batch_size", "max_steps", "rounds", "probe_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("duration_s", "probe_s", "ceiling_s", "sla_p95_ms", "timeout_s", "overload_step_s"):
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


def ceiling_batch_sizes(max_batch_size: int) -> list[int]:
    return sorted({1, 4, 8, max_batch_size} & set(range(1, max_batch_size + 1)))


def ceiling_layouts(cores: int, server_layout: tuple[int, int]) -> list[tuple[int, int]]:
    """(streams, threads per stream): one run using every core, one run per core, the server's."""
    return sorted({(1, cores), (cores, 1), server_layout}, key=lambda layout: (layout[0], -layout[1]))


def measure_ceiling(config: BenchConfig, texts: list[str], server_layout: tuple[int, int]) -> tuple[dict, list[int]]:
    """Texts/s of tokenize + pad + ONNX Runtime alone, per thread layout and batch size; the
    best of them is the ceiling's configuration.

    A layout is `streams` threads, each running whole batches on one shared session with
    `threads` intra-op threads (as the server's inference workers do). Batches are
    length-sorted (as the server groups similar lengths), then taken in a shuffled order
    until the time is up, so a time-bounded run is not biased to short texts. Several
    layouts and sizes, not only the server's: the ceiling must be the best the runtime can
    do on this machine, whatever the server chose. Also returns each text's token count.
    """
    from core.layout import physical_cores

    results, info, tokens = [], {}, []
    with _ceiling_affinity(config):
        for streams, threads in ceiling_layouts(physical_cores(), server_layout):
            model = _ceiling_model(config, threads)
            if (streams, threads) == server_layout:  # always among the layouts
                info = model.runner.info
            tokens = tokens or [len(ids) for ids in model.encoder.encode(texts)]
            for size in ceiling_batch_sizes(config.max_batch_size):
                entry = _ceiling_run(config, model, texts, tokens, streams, size)
                entry.update(threads=threads)
                results.append(entry)
                print(
                    f"[ceiling] {streams} stream(s) x {threads} thread(s), batch {size}: "
                    f"{entry['texts_per_s']:.1f} texts/s",
                    flush=True,
                )
            del model
    best = max(results, key=lambda e: e["texts_per_s"])
    own = [e for e in results if (e["streams"], e["threads"]) == server_layout]
    return {
        "texts_per_s": best["texts_per_s"],
        "sweep_best_texts_per_s": best["texts_per_s"],
        "best_batch_size": best["batch_size"],
        "best_layout": {"streams": best["streams"], "threads": best["threads"]},
        "server_layout_texts_per_s": max(e["texts_per_s"] for e in own),
        "mean_tokens": best["mean_tokens"],
        "measurements": results,
        "repeats": [],
        "runner": info,
    }, tokens


def repeat_ceiling(config: BenchConfig, texts: list[str], tokens: list[int], ceiling: dict, when: str) -> float:
    """Run the sweep's best configuration once more, make the ceiling the median of its runs,
    and return this run's texts/s.

    The sweep keeps the best of many single runs, and the largest of several noisy figures
    sits above what that configuration typically does; the speed of a shared machine also
    drifts over minutes. So the winner is run again before and after each round of the
    server's search, and the ceiling is the median of the sweep's run and these (all in the JSON).
    """
    layout, size = ceiling["best_layout"], ceiling["best_batch_size"]
    with _ceiling_affinity(config):
        model = _ceiling_model(config, layout["threads"])
        entry = _ceiling_run(config, model, texts, tokens, layout["streams"], size)
    entry.update(threads=layout["threads"], when=when)
    ceiling["repeats"].append(entry)
    runs = [ceiling["sweep_best_texts_per_s"], *(e["texts_per_s"] for e in ceiling["repeats"])]
    ceiling["texts_per_s"] = statistics.median(runs)
    print(
        f"[ceiling] {when}: {entry['texts_per_s']:.1f} texts/s; ceiling = median of "
        f"{', '.join(f'{v:.1f}' for v in runs)} = {ceiling['texts_per_s']:.1f}",
        flush=True,
    )
    return entry["texts_per_s"]


def queueing_bound(ceiling: dict, tokens: list[int], p95_ms: float) -> dict:
    """The share of the ceiling an ideal server (the ceiling's streams as FIFO workers, no
    overhead) reaches under Poisson arrivals at p95 <= `p95_ms` (loadtest/queueing.py)."""
    streams = ceiling["best_layout"]["streams"]
    fraction = bound_fraction(tokens, ceiling["texts_per_s"], streams, p95_ms)
    print(
        f"[ceiling] queueing bound: an ideal server with {streams} FIFO worker(s) meets p95 <= {p95_ms:g} ms "
        f"up to {fraction:.1%} of the ceiling",
        flush=True,
    )
    return {"fraction": fraction, "workers": streams, "p95_ms": p95_ms}


def _ceiling_model(config: BenchConfig, threads: int):
    """The server's encoder and OnnxRunner as the ceiling runs them: one session with
    `threads` intra-op threads, warmed up."""
    from server.config import ServerConfig
    from server.model import load_model

    model = load_model(
        ServerConfig(
            model_dir=config.model_dir,
            intra_op_threads=threads,
            inference_workers=1,
            max_batch_size=config.max_batch_size,
        )
    )
    model.runner.warmup()
    return model


def _ceiling_run(config: BenchConfig, model, texts: list[str], tokens: list[int], streams: int, size: int) -> dict:
    """One tight-loop run: batches of `size` sorted by `tokens` (each text's), shuffled, for ceiling_s seconds."""
    order = sorted(range(len(texts)), key=lambda i: tokens[i])
    batches = [[texts[i] for i in order[k : k + size]] for k in range(0, len(order), size)]
    random.Random(config.seed).shuffle(batches)
    asyncio.run(wait_for_quiet(config.max_other_cpu, config.quiet_wait_s))
    entry = _tight_loop(model, batches, streams, config.ceiling_s)
    entry.update(streams=streams, batch_size=size)
    return entry


@contextlib.contextmanager
def _ceiling_affinity(config: BenchConfig):
    """With --server-cpus, the ceiling runs on the CPUs the servers get; then this process
    goes back to the generator's CPUs (or all of them)."""
    cpus = parse_cpus(config.server_cpus)
    if cpus:
        os.sched_setaffinity(0, cpus)  # before the session: its threads inherit this set
    try:
        yield
    finally:
        if parse_cpus(config.client_cpus):
            os.sched_setaffinity(0, parse_cpus(config.client_cpus))
        elif cpus:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))


def _tight_loop(model, batches: list[list[str]], streams: int, seconds: float) -> dict:
    """`streams` threads take batches from one shared cycle until `seconds` have passed."""
    lock = threading.Lock()
    cycle = itertools.cycle(batches)
    totals = {"texts": 0, "tokens": 0, "padded": 0}
    start = time.perf_counter()

    def stream() -> None:
        while time.perf_counter() - start < seconds:
            with lock:
                batch = next(cycle)
            seqs = model.encoder.encode(batch)
            model.runner.predict(seqs)
            with lock:
                totals["texts"] += len(batch)
                totals["tokens"] += sum(len(x) for x in seqs)
                totals["padded"] += len(seqs) * max(len(x) for x in seqs)

    workers = [threading.Thread(target=stream, name=f"ceiling-{k}") for k in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    done = totals["texts"]
    return {
        "texts_per_s": done / elapsed,
        "texts": done,
        "seconds": elapsed,
        "mean_tokens": totals["tokens"] / done,
        "padding_ratio": 1 - totals["tokens"] / totals["padded"],
    }


def serve_and_search(
    name: str,
    cmd: list[str],
    bodies: list[bytes],
    config: BenchConfig,
    fractions: tuple[float, ...] = (),
    log_name: str = "",
    bound: float | None = None,
) -> dict:
    """Start `cmd` as a served process, search its capacity, stop it (`bound`: see search)."""
    log = config.log_dir / f"{log_name or name}.log"
    with ServedProcess(cmd, log, parse_cpus(config.server_cpus)) as proc:
        return {
            "command": shlex.join(cmd[1:] + ["--port", str(proc.port)]),
            "ready": proc.ready_body,
            "model_info": proc.get_json("/v1/model") if name.startswith("server") else {},
            **asyncio.run(search_served(name, proc, bodies, config, fractions, bound)),
        }


def server_rounds(
    config: BenchConfig,
    cmd: list[str],
    bodies: list[bytes],
    texts: list[str],
    tokens: list[int],
    ceiling: dict,
    fractions: tuple[float, ...],
) -> dict:
    """Configuration 2, `config.rounds` times: each round a fresh server, searched between two
    runs of the ceiling's configuration, so each round's ratio is against the ceiling of its
    own minutes. Returns the median round (by capacity), with every round under "rounds"."""
    rounds, before = [], repeat_ceiling(config, texts, tokens, ceiling, "before round 1")
    for k in range(1, config.rounds + 1):
        result = serve_and_search("server", cmd, bodies, config, fractions, log_name=f"server-round{k}")
        after = repeat_ceiling(config, texts, tokens, ceiling, f"after round {k}")
        beside = (before + after) / 2
        result.update(round=k, ceiling_beside=beside, vs_ceiling=result["capacity_rps"] / beside if beside else None)
        result.update(ideal_search(config, result, tokens, ceiling, beside, k))
        share = "n/a" if result["vs_ceiling"] is None else f"{result['vs_ceiling']:.0%}"
        ideal = result.get("ideal_same_search")
        print(
            f"[server] round {k}: {result['capacity_rps']:.1f} req/s = {share} of the ceiling "
            f"beside it ({before:.1f} before, {after:.1f} after)"
            + (f"; the ideal server under the same search finds {ideal['median']:.0%} of it (median)" if ideal else ""),
            flush=True,
        )
        rounds.append(result)
        before = after
    median = statistics.median_low(r["capacity_rps"] for r in rounds)
    chosen = next(r for r in rounds if r["capacity_rps"] == median)
    summary = [{k: v for k, v in r.items() if k not in ("ready", "model_info")} for r in rounds]
    return {**chosen, "rounds": summary}


def ideal_search(
    config: BenchConfig, result: dict, tokens: list[int], ceiling: dict, beside: float, k: int, searches: int = 40
) -> dict:
    """What the ideal server (loadtest/queueing.py) scores under this round's own search: the
    same start rate, step length, step limit and SLA, against the ceiling beside the round."""
    if not beside or not result.get("closed_loop_rps"):
        return {}
    found = searched_fractions(
        tokens,
        beside,
        ceiling["best_layout"]["streams"],
        config.sla_p95_ms,
        SEARCH_START * result["closed_loop_rps"],
        config.duration_s,
        config.max_steps,
        searches=searches,
        seed=config.seed + k,
    )
    q1, median, q3 = (float(v) for v in np.percentile(found, [25, 50, 75]))
    return {
        "ideal_same_search": {"median": median, "q1": q1, "q3": q3, "searches": searches},
        "vs_ideal_same_search": result["capacity_rps"] / (median * beside) if median else None,
    }


async def search_served(
    name: str,
    proc: ServedProcess,
    bodies: list[bytes],
    config: BenchConfig,
    extra_fractions: tuple[float, ...] = (),
    bound: float | None = None,
) -> dict:
    """`search` over HTTP against a served process."""
    async with LeanClient(proc.url) as client:
        requests = [client.build("POST", "/v1/predict", body) for body in bodies]
        return await search(
            name,
            config,
            extra_fractions,
            own_cpu=proc.cpu_seconds,
            where=f" (see {proc.log_path})",
            bound=bound,
            probe=lambda n, seconds: closed_loop_throughput(client, requests, n, seconds),
            step=lambda rate, seed: run_step(
                client,
                requests,
                rate,
                config.duration_s,
                seed=seed,
                timeout_s=config.timeout_s,
                server_cpu=proc.cpu_seconds,
            ),
        )


async def search_in_process(name: str, server_config, texts: list[str], config: BenchConfig) -> dict:
    """`search` over the server's batcher and workers in this process (configuration 2c)."""
    target = InProcessServer(server_config, texts)
    async with target:
        start = target.start(config.timeout_s)
        result = await search(
            name,
            config,
            (),
            probe=lambda n, seconds: closed_loop(start, len(texts), n, seconds),
            step=lambda rate, seed: open_loop_step(start, len(texts), rate, config.duration_s, seed),
        )
    return {"model_info": target.info(), **result}


async def search(
    name: str,
    config: BenchConfig,
    extra_fractions: tuple[float, ...],
    probe,
    step,
    own_cpu=None,
    where: str = "",
    bound: float | None = None,
) -> dict:
    """Probe closed-loop throughput, then bisect the open-loop rate that meets the SLA.

    `probe(concurrency, seconds)` and `step(rate, seed)` are awaitables measuring the target;
    `own_cpu` returns its CPU seconds when it is another process. `bound`, when given, stands
    for the probe's throughput (the search then starts where another target's did: the same
    grid of rates, so two capacities compare like for like).
    """
    await probe(4, min(2.0, config.probe_s))  # warm-up
    if bound is None:
        bound = await probe(config.probe_concurrency, config.probe_s)
        print(f"[{name}] closed-loop throughput ({config.probe_concurrency} clients): {bound:.1f} req/s", flush=True)
    else:
        print(f"[{name}] search starts from a closed-loop throughput of {bound:.1f} req/s (given)", flush=True)
    if bound <= 0:
        return {
            "closed_loop_rps": 0.0,
            "capacity_rps": 0.0,
            "capacity_is_lower_bound": False,
            "at_capacity": None,
            "at_fraction": {},
            "steps": [],
            "error": f"no successful answer in the closed-loop probe{where}",
        }
    history, steps, retries = [], [], [config.retries]

    async def measure(rate: float, **tags) -> bool:
        """One step at `rate`; a miss while other processes kept the CPUs busy is run again."""
        while True:
            await wait_for_quiet(config.max_other_cpu, config.quiet_wait_s, own_cpu)
            result = await step(rate, config.seed + len(steps))
            await asyncio.sleep(0.5)  # every answer is in; let the server settle before the next rate
            ok = result.meets(config.sla_p95_ms, config.max_error_rate)
            disturbed = not ok and retries[0] > 0 and (result.other_cpu_cores or 0.0) > config.max_other_cpu
            steps.append({**result.to_dict(), "meets_sla": ok, "discarded": disturbed, **tags})
            print(
                f"[{name}] {_describe(result)} -> {'meets' if ok else 'misses'} SLA"
                + (" (other processes busy: run again)" if disturbed else ""),
                flush=True,
            )
            if not disturbed:
                return ok
            retries[0] -= 1

    while (rate := next_rate(history, start=SEARCH_START * bound, max_steps=config.max_steps)) is not None:
        history.append((rate, await measure(rate)))
    cap = capacity(history)
    at = {}
    for fraction in extra_fractions if cap > 0 else ():
        await measure(fraction * cap, fraction=fraction)
        at[f"{fraction:.0%}"] = steps[-1]
    best = next((s for s in steps if s["rate"] == cap and not s["discarded"] and "fraction" not in s), None)
    # Out of steps before a rate failed: the true capacity is higher than the one reported.
    lower_bound = bool(history) and all(ok for _, ok in history)
    return {
        "closed_loop_rps": bound,
        "capacity_rps": cap,
        "capacity_is_lower_bound": lower_bound,
        "at_capacity": best,
        "at_fraction": at,
        "steps": steps,
    }


def _describe(step) -> str:
    other = "n/a" if step.other_cpu_cores is None else f"{step.other_cpu_cores:.2f}"
    return (
        f"rate {step.rate:.1f}/s: sent {step.sent}, p50 {step.p50_ms:.0f} ms, p95 {step.p95_ms:.0f} ms, "
        f"p99 {step.p99_ms:.0f} ms, errors {step.error_rate:.1%}, CPU cores: generator "
        f"{step.client_cpu_cores:.2f}, other processes {other}"
    )


def run_overload_bench(config: BenchConfig, argv: list[str]) -> int:
    """The overload benchmark (loadtest/overload.py) on the server's default layout."""
    texts, source = load_texts(config.texts, config.data_dir, seed=config.seed)
    bodies = payloads(texts)
    info = machine_info()
    print(
        f"bench --overload: {len(texts)} texts ({source}); model {config.model_dir}; {info['cpu_model']}, "
        f"{info['logical_cpus']} CPUs",
        flush=True,
    )
    from core.layout import model_on_gpu, thread_layout

    workers, threads = thread_layout(config.inference_workers, config.intra_op_threads, model_on_gpu(config.model_dir))
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--model-dir",
        str(config.model_dir),
        "--host",
        "127.0.0.1",
        "--inference-workers",
        str(workers),
        "--intra-op-threads",
        str(threads),
        "--max-batch-size",
        str(config.max_batch_size),
        *shlex.split(config.server_args),
    ]
    config.log_dir.mkdir(parents=True, exist_ok=True)
    results = run_overload(
        config,
        cmd,
        bodies,
        lambda name, command, bound=None: serve_and_search(
            name, command, bodies, config, log_name=name.replace(" ", "_"), bound=bound
        ),
    )
    info["load_average_end"] = os.getloadavg()
    paths = write_overload_report(
        config.output_dir,
        {
            "command": "python -m loadtest.bench " + shlex.join(argv),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "texts": {"count": len(texts), "source": source},
            "machine": info,
            **results,
        },
    )
    print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)
    return 0


def run(config: BenchConfig, argv: list[str]) -> int:
    if config.overload:
        return run_overload_bench(config, argv)
    texts, source = load_texts(config.texts, config.data_dir, seed=config.seed)
    bodies = payloads(texts)
    info = machine_info()
    print(
        f"bench: {len(texts)} texts ({source}); model {config.model_dir}; {info['cpu_model']}, "
        f"{info['logical_cpus']} CPUs",
        flush=True,
    )
    from core.layout import model_on_gpu, physical_cores, thread_layout

    cores = physical_cores()
    # The layout the server picks by default for this model (one worker on a GPU).
    workers, threads = thread_layout(config.inference_workers, config.intra_op_threads, model_on_gpu(config.model_dir))
    ceiling, tokens = measure_ceiling(config, texts, (workers, threads))
    best = ceiling["best_layout"]
    print(
        f"[ceiling] sweep: {ceiling['texts_per_s']:.1f} texts/s at best ({best['streams']} stream(s) x "
        f"{best['threads']} thread(s), batch {ceiling['best_batch_size']})",
        flush=True,
    )
    server_cmd = [
        sys.executable,
        "-m",
        "server",
        "--model-dir",
        str(config.model_dir),
        "--host",
        "127.0.0.1",
        *shlex.split(config.server_args),
    ]

    def served(n_workers: int, n_threads: int, batch: int) -> list[str]:
        """Explicit layouts, so each served command line says exactly what ran."""
        return server_cmd + [
            "--inference-workers",
            str(n_workers),
            "--intra-op-threads",
            str(n_threads),
            "--max-batch-size",
            str(batch),
        ]

    targets = [("server", served(workers, threads, config.max_batch_size), (0.5, 0.8))]
    if "single_worker" not in config.skipped and (workers, threads) != (1, cores):
        targets.append(("server_single_worker", served(1, cores, config.max_batch_size), ()))
    if "batch1" not in config.skipped:
        targets.append(("server_batch1", served(workers, threads, 1), ()))
    if "torch" not in config.skipped:
        targets.append(
            (
                "torch_baseline",
                [
                    sys.executable,
                    "-m",
                    "loadtest.torch_baseline",
                    "--checkpoint",
                    str(config.checkpoint),
                    "--host",
                    "127.0.0.1",
                    "--threads",
                    str(config.torch_threads or cores),
                    "--device",
                    config.torch_device,
                ],
                (),
            )
        )
    results = {}
    config.log_dir.mkdir(parents=True, exist_ok=True)
    for name, cmd, fractions in targets:
        if name != "server":
            results[name] = serve_and_search(name, cmd, bodies, config, fractions)
            continue
        results[name] = server_rounds(config, cmd, bodies, texts, tokens, ceiling, fractions)
        if "in_process" not in config.skipped:
            # The same settings as the served command line, parsed by the server's own parser.
            served_config = parse_server_config(cmd[cmd.index("--model-dir") :])
            results["in_process"] = {
                "command": "in this process: " + shlex.join(cmd[cmd.index("--model-dir") :]),
                **asyncio.run(search_in_process("in_process", served_config, texts, config)),
            }
    ceiling["queueing_bound"] = queueing_bound(ceiling, tokens, config.sla_p95_ms)
    info["load_average_end"] = os.getloadavg()
    from server.config import ServerConfig

    server_defaults = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(ServerConfig()).items()}
    paths = write_report(
        config.output_dir,
        {
            "command": "python -m loadtest.bench " + shlex.join(argv),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "texts": {"count": len(texts), "source": source},
            "machine": info,
            "ceiling": ceiling,
            "server_defaults": server_defaults,
            **results,
        },
    )
    print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.splitlines()[0])
    for f in fields(BenchConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "quick":
            parser.add_argument(
                flag,
                action="store_true",
                help="smoke run: "
                + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                + "; output to reports/bench-quick unless --output-dir is given",
            )
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=_HELP[f.name])
        elif f.name in ("model_dir", "checkpoint"):
            parser.add_argument(flag, type=Path, required=f.name == "model_dir", help=_HELP[f.name])
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
    values["overload"] = bool(args["overload"])
    if values["checkpoint"] is None:
        if not values["overload"] and "torch" not in (values["skip"] or "").split(","):
            print(
                "error: --checkpoint is required (the PyTorch baseline serves it), unless --overload or --skip torch",
                file=sys.stderr,
            )
            return 2
        values["checkpoint"] = Path("-")
    try:
        config = BenchConfig(**values)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, what in (
        (config.model_dir / "model.onnx", "--model-dir"),
        (config.checkpoint / "config.json", "--checkpoint"),
    ):
        unused = what == "--checkpoint" and ("torch" in config.skipped or config.overload)
        if not path.is_file() and not unused:
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
