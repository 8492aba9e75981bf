"""The capacity benchmark: four ways, same model and same texts (`python -m bench`).

1. the ceiling (bench/ceiling.py);
2. `python -m server` with dynamic batching, --rounds times, each round a fresh server
   between two runs of the ceiling's configuration: its capacity is the median round, and
   2/1 the median of the rounds' own ratios;
2o. the same server with `--engine ort` (today's engine), searched right after 2 in each round,
   where auto weighs more than one engine: 2 / 2o is what auto's choice buys;
2c. the server's batcher and inference workers in this process, without HTTP
   (bench/inprocess.py): splits 2's gap to 1 into queueing and HTTP;
2b. the same server with one inference worker using every core;
3. the same server with --max-batch-size 1 (batching off);
4. bench.torch_baseline: PyTorch eager, one request at a time;
5. FastAPI + uvicorn, a worker process per core, no batching (bench/fastapi_baseline.py).
Each is searched the same way (bench/search.py). Then the overhead row (bench/overhead.py): the
same texts' one review through a tiny random model, closed loop, one process vs a process per
core vs FastAPI + uvicorn. Writes <output-dir>/BENCHMARKS.md and
benchmarks.json (bench/capacity_report.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.capacity_report import write_report
from bench.ceiling import measure_ceiling, queueing_bound, repeat_ceiling
from bench.config import BenchConfig, command_line
from bench.overhead import run_overhead
from bench.procs import server_command
from bench.queueing import searched_fractions
from bench.rates import SEARCH_START
from bench.record import fmt
from bench.search import search_in_process, serve_and_search, workload
from server.config import ServerConfig
from server.config import parse_config as parse_server_config


def run_capacity(config: BenchConfig, argv: list[str]) -> int:
    texts, source, bodies, info = workload(config, "bench")
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
    server_cmd = server_command(config.model_dir, *shlex.split(config.server_args))

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

    # (name, served command line, shares of its capacity measured after the search)
    targets: list[tuple[str, list[str], tuple[float, ...]]] = [
        ("server", served(workers, threads, config.max_batch_size), (0.5, 0.8))
    ]
    if "single_worker" not in config.skipped and (workers, threads) != (1, cores):
        targets.append(("server_single_worker", served(1, cores, config.max_batch_size), ()))
    if "batch1" not in config.skipped:
        targets.append(("server_batch1", served(workers, threads, 1), ()))
    if "torch" not in config.skipped:
        targets.append(("torch_baseline", torch_command(config, cores), ()))
    if "fastapi" not in config.skipped and importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):
        from bench.fastapi_baseline import MODEL_DIR_ENV

        # Its workers read the model directory from the environment (uvicorn's factory takes no arguments).
        os.environ[MODEL_DIR_ENV] = str(config.model_dir)
        targets.append(("fastapi_uvicorn", fastapi_command(cores), ()))
    results: dict[str, Any] = {}
    config.log_dir.mkdir(parents=True, exist_ok=True)
    baseline = ort_baseline(config, ceiling["engines"], served(workers, threads, config.max_batch_size))
    for name, cmd, fractions in targets:
        if name != "server":
            results[name] = serve_and_search(name, cmd, bodies, config, fractions)
            continue
        results[name] = server_rounds(config, cmd, bodies, texts, tokens, ceiling, fractions, baseline)
        if baseline:
            results["server_ort"] = results[name].pop("baseline")
        if "in_process" not in config.skipped:
            # The same settings as the served command line, parsed by the server's own parser.
            served_config = parse_server_config(cmd[cmd.index("--model-dir") :])
            results["in_process"] = {
                "command": "in this process: " + shlex.join(cmd[cmd.index("--model-dir") :]),
                **asyncio.run(search_in_process("in_process", served_config, texts, config)),
            }
    if "overhead" not in config.skipped:
        results["overhead"] = run_overhead(config, texts)
    ceiling["queueing_bound"] = queueing_bound(ceiling, tokens, config.sla_p95_ms)
    info["load_average_end"] = os.getloadavg()
    server_defaults = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(ServerConfig()).items()}
    paths = write_report(
        config.output_dir,
        {
            "command": command_line(argv),
            "config": config.record(),
            "texts": {"count": len(texts), "source": source},
            "machine": info,
            "ceiling": ceiling,
            "server_defaults": server_defaults,
            **results,
        },
    )
    print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)
    return 0


def fastapi_command(cores: int) -> list[str]:
    """Configuration 5's served command line: FastAPI + uvicorn, a worker process per core, no
    batching (bench/fastapi_baseline.py); ServedProcess appends --port."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.fastapi_baseline:create_app",
        "--factory",
        *("--host", "127.0.0.1", "--workers", str(cores), "--log-level", "warning", "--no-access-log"),
    ]


def ort_baseline(config: BenchConfig, engines: list[str], cmd: list[str]) -> list[str] | None:
    """Configuration 2o, today's engine: the server of 2 with `--engine ort`, searched in the same
    rounds as 2 (right after each), so auto's gain is a ratio of one run on the same texts. None
    where auto has nothing to weigh (ONNX Runtime alone), the engine is pinned, or it is skipped."""
    if len(engines) < 2 or "--engine" in shlex.split(config.server_args) or "ort" in config.skipped:
        return None
    return [*cmd, "--engine", "ort"]


def torch_command(config: BenchConfig, cores: int) -> list[str]:
    """Configuration 4's served command line: the PyTorch baseline on the checkpoint."""
    return [
        sys.executable,
        "-m",
        "bench.torch_baseline",
        "--checkpoint",
        str(config.checkpoint),
        "--host",
        "127.0.0.1",
        "--threads",
        str(config.torch_threads or cores),
        "--device",
        config.torch_device,
    ]


def server_rounds(
    config: BenchConfig,
    cmd: list[str],
    bodies: list[bytes],
    texts: list[str],
    tokens: list[int],
    ceiling: dict[str, Any],
    fractions: tuple[float, ...],
    baseline: list[str] | None = None,
) -> dict[str, Any]:
    """Configuration 2, `config.rounds` times: each round a fresh server, searched between two
    runs of the ceiling's configuration, so each round's ratio is against the ceiling of its
    own minutes. Returns the median round (by capacity), with every round under "rounds".
    With `baseline` (2o, ort_baseline) each round also searches it, right after 2: each round's
    `vs_ort` is 2's capacity over 2o's, and "baseline" holds 2o's median round."""
    rounds, before = [], repeat_ceiling(config, texts, tokens, ceiling, "before round 1")
    baselines: list[dict[str, Any]] = []
    for k in range(1, config.rounds + 1):
        result = serve_and_search("server", cmd, bodies, config, fractions, log_name=f"server-round{k}")
        if baseline:
            other = serve_and_search("server_ort", baseline, bodies, config, log_name=f"server-ort-round{k}")
            other["round"] = k
            baselines.append(other)
            result["vs_ort"] = result["capacity_rps"] / other["capacity_rps"] if other["capacity_rps"] else None
            print(
                f"[server_ort] round {k}: {other['capacity_rps']:.1f} req/s with --engine ort; "
                f"2 / 2o = {fmt(result['vs_ort'], '.2f', 'x')}",
                flush=True,
            )
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
    out = {**median_round(rounds), "rounds": round_summaries(rounds)}
    if baselines:
        out["baseline"] = {**median_round(baselines), "rounds": round_summaries(baselines)}
    return out


def round_summaries(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every round without what the median round already carries (its /readyz and /v1/model)."""
    return [{k: v for k, v in r.items() if k not in ("ready", "model_info")} for r in rounds]


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median capacity (the lower one of an even count)."""
    median = statistics.median_low(r["capacity_rps"] for r in rounds)
    return next(r for r in rounds if r["capacity_rps"] == median)


def ideal_search(
    config: BenchConfig,
    result: dict[str, Any],
    tokens: list[int],
    ceiling: dict[str, Any],
    beside: float,
    k: int,
    searches: int = 40,
) -> dict[str, Any]:
    """What the ideal server (bench/queueing.py) scores under this round's own search: the
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
