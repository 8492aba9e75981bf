"""`python -m bench --overload`: the server with its latency budget on and off, past capacity.

    python -m bench --overload --model-dir artifacts/model --checkpoint artifacts/checkpoint \
        [--overload-step-s 30] [--rounds 3] [--quick] [--output-dir docs]

1. capacity: the normal rate search (p95 <= --sla-p95-ms, errors <= --max-error-rate), once
   for the server with the budget off (`--latency-budget-ms 0`: queue-only admission, as before
   the budget existed; the inference layer, nice'd workers and cost model still run) and once with
   it on (`--latency-budget-ms` = --sla-p95-ms). The budget-off capacity is
   the run's yardstick: every overload step is a multiple of it;
2. overload rounds: for each server, open-loop Poisson steps of --overload-step-s at 0.8x,
   1.5x, 2x and 5x of that capacity, then at once (one schedule, no pause) a recovery step at 0.5x. Per
   step: goodput (answers within the budget per second), the share refused, refusal latency,
   p50/p95/p99 of the answered requests, the server's and the generator's CPU, and for the
   recovery step the seconds until p95 is back under the budget (bench/overload_figures.py).
   Rounds alternate which server goes first; reported figures are medians over rounds.
Writes a section of <output-dir>/BENCHMARKS.md and overload.json (bench/overload_report.py).
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Callable, Sequence
from typing import Any

from bench.config import BenchConfig, command_line
from bench.httpclient import LeanClient
from bench.openloop import http_start, http_status, open_loop_samples
from bench.overload_figures import cpu_per_refusal_ms, median_steps, rejected_counts, split_samples, summarize
from bench.overload_report import write_overload_report
from bench.procs import ServedProcess, parse_cpus, server_command
from bench.search import serve_and_search, workload

# (name, multiple of the budget-off capacity); the recovery step follows the 5x burst at once.
STEPS = (("0.8x", 0.8), ("1.5x", 1.5), ("2x", 2.0), ("5x", 5.0), ("recovery 0.5x", 0.5))
VARIANTS = (("budget_on", ()), ("budget_off", ("--latency-budget-ms", "0")))  # budget_on: --sla-p95-ms, below
# search_capacity(name, served command line, bound=None) -> the search's result (bench/search.py)
SearchCapacity = Callable[..., dict[str, Any]]


def run_overload_bench(config: BenchConfig, argv: list[str]) -> int:
    """The overload benchmark on the server's default layout; writes its report."""
    texts, source, bodies, info = workload(config, "bench --overload")
    from core.layout import model_on_gpu, thread_layout

    workers, threads = thread_layout(config.inference_workers, config.intra_op_threads, model_on_gpu(config.model_dir))
    cmd = server_command(
        config.model_dir,
        *("--inference-workers", str(workers), "--intra-op-threads", str(threads)),
        *("--max-batch-size", str(config.max_batch_size), *shlex.split(config.server_args)),
    )
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
            "command": command_line(argv),
            "config": config.record(),
            "texts": {"count": len(texts), "source": source},
            "machine": info,
            **results,
        },
    )
    print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)
    return 0


async def overload_round(
    proc: ServedProcess,
    bodies: Sequence[bytes],
    capacity_rps: float,
    step_s: float,
    budget_ms: float,
    timeout_s: float,
    seed: int,
) -> list[dict[str, Any]]:
    """The five steps against one served process, back to back; the 5x burst and the recovery
    step after it are one schedule (the rate drops at the boundary, with no pause for the
    burst's answers), split by when each request was due."""
    out: list[dict[str, Any]] = []
    async with LeanClient(proc.url) as client:
        requests = [client.build("POST", "/v1/predict", body) for body in bodies]
        start = http_start(client, requests, timeout_s)
        base: tuple[int, float] | None = None  # the first step's (answers, loop CPU), when it refused nothing
        k = 0
        while k < len(STEPS):
            multiple = STEPS[k][1]
            joined = k + 1 < len(STEPS) and STEPS[k + 1][0].startswith("recovery")
            then = ((STEPS[k + 1][1] * capacity_rps, step_s),) if joined else ()
            loop0, server0 = proc.main_thread_cpu_seconds(), proc.cpu_seconds()
            rejected0 = rejected_counts(proc.get_text("/metrics"))
            samples = await open_loop_samples(
                start,
                len(requests),
                multiple * capacity_rps,
                step_s,
                seed=seed + k,
                server_cpu=proc.cpu_seconds,
                status_of=http_status,
                stretch=False,
                then=then,
                mark=lambda: {"server_cpu_s": proc.cpu_seconds(), "loop_cpu_s": proc.main_thread_cpu_seconds()},
            )
            loop_total = proc.main_thread_cpu_seconds() - loop0
            rejected1 = rejected_counts(proc.get_text("/metrics"))
            reasons = {
                r: rejected1.get(r, 0.0) - rejected0.get(r, 0.0)
                for r in ("overloaded", "shed", "queue_full", "deadline")
            }
            if joined:
                [mark] = samples.marks
                parts = list(zip((STEPS[k], STEPS[k + 1]), split_samples(samples, step_s, mark, server0)))
                loops = [mark["loop_cpu_s"] - loop0, loop_total - (mark["loop_cpu_s"] - loop0)]
            else:
                parts, loops = [(STEPS[k], samples)], [loop_total]
            for ((step_name, _), part), loop_cpu in zip(parts, loops):
                figures = summarize(step_name, part, budget_ms, recovery=step_name.startswith("recovery"))
                entry = {
                    **figures.to_dict(),
                    "loop_cpu_cores": loop_cpu / part.wall_s if part.wall_s else None,
                    # Refused at the door (overloaded), dropped from the queue unrun (shed), queue full;
                    # for a burst and its recovery together, counted over both.
                    "refused_by_reason": reasons,
                }
                if k == 0 and not figures.refused:
                    base = (figures.answered, loop_cpu)
                elif base is not None:
                    entry["server_cpu_ms_per_refusal"] = cpu_per_refusal_ms(
                        *base, figures.answered, figures.refused, loop_cpu
                    )
                print(
                    f"  [{step_name}] rate {figures.rate:.1f}/s: goodput {figures.goodput_rps:.1f}/s, refused "
                    f"{figures.refused_share:.1%} (p50 {figures.refusal_p50_ms:.1f} / p99 {figures.refusal_p99_ms:.1f}"
                    f" ms), answered p50/p95/p99 {figures.answered_p50_ms:.0f}/{figures.answered_p95_ms:.0f}/"
                    f"{figures.answered_p99_ms:.0f} ms, other errors {figures.other_errors}"
                    + (f", recovered after {figures.recovery_s} s" if step_name.startswith("recovery") else "")
                    + f"; server: {', '.join(f'{r} {v:.0f}' for r, v in reasons.items())}",
                    flush=True,
                )
                out.append(entry)
            k += len(parts)
    return out


def run_overload(
    config: BenchConfig, cmd: list[str], bodies: list[bytes], search_capacity: SearchCapacity
) -> dict[str, Any]:
    """The whole overload benchmark (see the module's docstring); `search_capacity(name, cmd,
    bound=None)` runs the normal rate search on a served command line (starting from `bound`
    when given) and returns its result."""
    budget_ms = config.sla_p95_ms
    commands = {name: [*cmd, *extra] for name, extra in VARIANTS}
    commands["budget_on"] += ["--latency-budget-ms", f"{budget_ms:g}"]  # the budget the goodput is counted against
    # The same search for both: the budget-on one starts from the budget-off probe's throughput (a
    # closed-loop probe of a server that refuses measures its refusals' pace, not its capacity).
    capacities = {"budget_off": search_capacity("capacity budget_off", commands["budget_off"])}
    capacities["budget_on"] = search_capacity(
        "capacity budget_on", commands["budget_on"], capacities["budget_off"]["closed_loop_rps"]
    )
    yardstick = capacities["budget_off"]["capacity_rps"]
    if not yardstick:
        raise RuntimeError("the budget-off server met the SLA at no rate; no overload steps to run")
    print(
        f"[overload] capacity: budget off {yardstick:.1f} req/s, budget on "
        f"{capacities['budget_on']['capacity_rps']:.1f} req/s; steps are multiples of {yardstick:.1f}",
        flush=True,
    )
    rounds: dict[str, list[list[dict[str, Any]]]] = {name: [] for name, _ in VARIANTS}
    cpus = parse_cpus(config.server_cpus)
    for r in range(config.rounds):
        order = [name for name, _ in VARIANTS][:: 1 if r % 2 == 0 else -1]
        for name in order:
            print(f"[overload] round {r + 1}/{config.rounds}: {name}", flush=True)
            with ServedProcess(commands[name], config.log_dir / f"overload_{name}_{r}.log", cpus=cpus) as proc:
                steps = asyncio.run(
                    overload_round(
                        proc,
                        bodies,
                        yardstick,
                        config.overload_step_s,
                        budget_ms,
                        config.timeout_s,
                        config.seed + 100 * r,
                    )
                )
            rounds[name].append(steps)
    return {
        "budget_ms": budget_ms,
        "step_s": config.overload_step_s,
        "capacity_rps": yardstick,
        "capacity": {
            name: {k: v for k, v in result.items() if k not in ("steps",)} | {"steps": result.get("steps", [])}
            for name, result in capacities.items()
        },
        "commands": {name: commands[name] for name in commands},
        "rounds": rounds,
        "median": {name: median_steps(rounds[name]) for name in rounds},
    }
