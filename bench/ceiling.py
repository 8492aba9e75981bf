"""Configuration 1, the ceiling: the server's own encoder and OnnxRunner in a tight loop.

No HTTP, no queue: length-sorted batches through tokenize + pad + the engine, for every engine
`--engine auto` would weigh (installed here and checked by the export), every thread layout
(1 stream x all cores, one stream per core x 1 thread, and the server's) and batch size (1, 4,
8, --max-batch-size). The server itself runs `--engine auto`, which serves the fastest. The
best is run again before and after each round of the server's search (bench/capacity.py), and
the ceiling is the median of its runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import statistics
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.config import BenchConfig
from bench.openloop import wait_for_quiet
from bench.procs import parse_cpus
from bench.queueing import bound_fraction

if TYPE_CHECKING:
    from server.model import ServedModel


def ceiling_batch_sizes(max_batch_size: int) -> list[int]:
    return sorted({1, 4, 8, max_batch_size} & set(range(1, max_batch_size + 1)))


def ceiling_engines(model_dir: Any) -> list[str]:
    """The engines the ceiling measures: those installed here that the export's parity gate
    checked on this model directory (ONNX Runtime always), as `--engine auto` weighs them."""
    from core.modeldir import read_model_dir
    from server.engine import DEFAULT_ENGINE, ENGINES, not_installed

    checked = read_model_dir(model_dir).checked_engines()
    return [name for name in ENGINES if name == DEFAULT_ENGINE or (name in checked and not_installed(name) is None)]


def ceiling_layouts(cores: int, server_layout: tuple[int, int]) -> list[tuple[int, int]]:
    """(streams, threads per stream): one run using every core, one run per core, the server's."""
    return sorted({(1, cores), (cores, 1), server_layout}, key=lambda layout: (layout[0], -layout[1]))


def measure_ceiling(
    config: BenchConfig, texts: list[str], server_layout: tuple[int, int]
) -> tuple[dict[str, Any], list[int]]:
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

    results: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    tokens: list[int] = []
    engines = ceiling_engines(config.model_dir)
    with _ceiling_affinity(config):
        for engine in engines:
            for streams, threads in ceiling_layouts(physical_cores(), server_layout):
                model = _ceiling_model(config, threads, engine, streams)
                if (streams, threads) == server_layout and not info:  # always among the layouts
                    info = model.runner.info
                tokens = tokens or [len(ids) for ids in model.encoder.encode(texts)]
                for size in ceiling_batch_sizes(config.max_batch_size):
                    entry = _ceiling_run(config, model, texts, tokens, streams, size)
                    entry.update(threads=threads, engine=engine)
                    results.append(entry)
                    print(
                        f"[ceiling] {engine}, {streams} stream(s) x {threads} thread(s), batch {size}: "
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
        "best_engine": best["engine"],
        "engines": engines,
        # per engine, its best texts/s in the server's layout (what auto weighs)
        "server_layout_by_engine": {
            name: max(e["texts_per_s"] for e in own if e["engine"] == name) for name in engines
        },
        "server_layout_texts_per_s": max(e["texts_per_s"] for e in own),
        "mean_tokens": best["mean_tokens"],
        "measurements": results,
        "repeats": [],
        "runner": info,
    }, tokens


def repeat_ceiling(
    config: BenchConfig, texts: list[str], tokens: list[int], ceiling: dict[str, Any], when: str
) -> float:
    """Run the sweep's best configuration once more, make the ceiling the median of its runs,
    and return this run's texts/s.

    The sweep keeps the best of many single runs, and the largest of several noisy figures
    sits above what that configuration typically does; the speed of a shared machine also
    drifts over minutes. So the winner is run again before and after each round of the
    server's search, and the ceiling is the median of the sweep's run and these (all in the JSON).
    """
    layout, size = ceiling["best_layout"], ceiling["best_batch_size"]
    with _ceiling_affinity(config):
        engine = ceiling.get("best_engine", "ort")
        model = _ceiling_model(config, layout["threads"], engine, layout["streams"])
        entry = _ceiling_run(config, model, texts, tokens, layout["streams"], size)
    entry.update(threads=layout["threads"], engine=engine, when=when)
    ceiling["repeats"].append(entry)
    runs = [ceiling["sweep_best_texts_per_s"], *(e["texts_per_s"] for e in ceiling["repeats"])]
    ceiling["texts_per_s"] = statistics.median(runs)
    print(
        f"[ceiling] {when}: {entry['texts_per_s']:.1f} texts/s; ceiling = median of "
        f"{', '.join(f'{v:.1f}' for v in runs)} = {ceiling['texts_per_s']:.1f}",
        flush=True,
    )
    return float(entry["texts_per_s"])


def queueing_bound(ceiling: dict[str, Any], tokens: list[int], p95_ms: float) -> dict[str, Any]:
    """The share of the ceiling an ideal server (the ceiling's streams as FIFO workers, no
    overhead) reaches under Poisson arrivals at p95 <= `p95_ms` (bench/queueing.py)."""
    streams = ceiling["best_layout"]["streams"]
    fraction = bound_fraction(tokens, ceiling["texts_per_s"], streams, p95_ms)
    print(
        f"[ceiling] queueing bound: an ideal server with {streams} FIFO worker(s) meets p95 <= {p95_ms:g} ms "
        f"up to {fraction:.1%} of the ceiling",
        flush=True,
    )
    return {"fraction": fraction, "workers": streams, "p95_ms": p95_ms}


def _ceiling_model(config: BenchConfig, threads: int, engine: str = "ort", streams: int = 1) -> ServedModel:
    """The server's encoder and OnnxRunner as the ceiling runs them, on `engine`: `threads`
    threads per run, for `streams` concurrent callers (ONNX Runtime: one shared session when
    single-threaded; OpenVINO: one infer request per stream), warmed up."""
    from server.config import ServerConfig
    from server.model import load_model

    model = load_model(
        ServerConfig(
            model_dir=config.model_dir,
            intra_op_threads=threads,
            inference_workers=streams,
            max_batch_size=config.max_batch_size,
            engine=engine,
        )
    )
    model.runner.warmup()
    return model


def _ceiling_run(
    config: BenchConfig, model: ServedModel, texts: list[str], tokens: list[int], streams: int, size: int
) -> dict[str, Any]:
    """One tight-loop run: batches of `size` sorted by `tokens` (each text's), shuffled, for ceiling_s seconds."""
    order = sorted(range(len(texts)), key=lambda i: tokens[i])
    batches = [[texts[i] for i in order[k : k + size]] for k in range(0, len(order), size)]
    random.Random(config.seed).shuffle(batches)
    asyncio.run(wait_for_quiet(config.max_other_cpu, config.quiet_wait_s))
    entry = _tight_loop(model, batches, streams, config.ceiling_s)
    entry.update(streams=streams, batch_size=size)
    return entry


@contextlib.contextmanager
def _ceiling_affinity(config: BenchConfig) -> Iterator[None]:
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


def _tight_loop(model: ServedModel, batches: list[list[str]], streams: int, seconds: float) -> dict[str, Any]:
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
