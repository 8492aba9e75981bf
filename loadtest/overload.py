"""`python -m loadtest.bench --overload`: the server with its latency budget on and off, past capacity.

    python -m loadtest.bench --overload --model-dir artifacts/model --checkpoint artifacts/checkpoint \
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
   recovery step the seconds until p95 is back under the budget. Rounds alternate which
   server goes first; reported figures are medians over rounds.
Writes <output-dir>/OVERLOAD.md and overload.json (the report: loadtest/overload_report.py).
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loadtest.httpclient import LeanClient
from loadtest.openloop import Samples, http_start, http_status, open_loop_samples
from loadtest.procs import ServedProcess, parse_cpus

# (name, multiple of the budget-off capacity); the recovery step follows the 5x burst at once.
STEPS = (("0.8x", 0.8), ("1.5x", 1.5), ("2x", 2.0), ("5x", 5.0), ("recovery 0.5x", 0.5))
VARIANTS = (("budget_on", ()), ("budget_off", ("--latency-budget-ms", "0")))  # budget_on: --sla-p95-ms, below
RECOVERY_WINDOW_S = 1.0


@dataclass(frozen=True)
class StepFigures:
    """One overload step, from its requests' samples (pure: see summarize)."""

    name: str
    rate: float
    sent: int
    goodput_rps: float  # answered 200 within the budget, per second of the step
    answered: int
    refused: int  # 503 (overloaded, queue_full)
    other_errors: int  # 504, 500, timeouts, connection errors
    refused_share: float
    refusal_p50_ms: float
    refusal_p99_ms: float
    answered_p50_ms: float
    answered_p95_ms: float
    answered_p99_ms: float
    recovery_s: float | None  # seconds from the step's start until p95 stays under the budget
    server_cpu_cores: float | None
    server_cpu_ms_per_request: float | None
    client_cpu_cores: float
    error_kinds: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def recovery_seconds(
    due_s: np.ndarray, latency_ms: np.ndarray, ok: np.ndarray, budget_ms: float, window_s: float = RECOVERY_WINDOW_S
) -> float | None:
    """Seconds from the step's start until the p95 of answered requests stays under the
    budget: the start of the first `window_s` window after which no window's p95 exceeds it
    and no window went unanswered (a server refusing everything has not recovered). None
    when the last window still fails (not recovered within the step)."""
    if not ok.any():
        return None
    end = float(due_s.max()) if len(due_s) else 0.0
    windows = max(1, math.ceil(end / window_s))
    last_bad = -1
    for k in range(windows):
        due = (due_s >= k * window_s) & (due_s < (k + 1) * window_s)
        inside = ok & due
        if (due.any() and not inside.any()) or (inside.any() and _pct(latency_ms[inside], 95) > budget_ms):
            last_bad = k
    if last_bad == windows - 1:
        return None
    return (last_bad + 1) * window_s


def summarize(name: str, samples: Samples, budget_ms: float, recovery: bool = False) -> StepFigures:
    """A step's figures from its samples: 200s are answers, 503s refusals, the rest errors."""
    status = samples.status
    ok = np.array([s == 200 for s in status], dtype=bool)
    refused = np.array([s == 503 for s in status], dtype=bool)
    lat = samples.latency_ms
    sent = len(status)
    goodput = int((ok & (lat <= budget_ms)).sum())
    server = samples.server_cpu_s
    return StepFigures(
        name=name,
        rate=samples.rate,
        sent=sent,
        goodput_rps=goodput / samples.duration_s,
        answered=int(ok.sum()),
        refused=int(refused.sum()),
        other_errors=int(sent - ok.sum() - refused.sum()),
        refused_share=float(refused.sum() / sent) if sent else 0.0,
        refusal_p50_ms=_pct(lat[refused], 50),
        refusal_p99_ms=_pct(lat[refused], 99),
        answered_p50_ms=_pct(lat[ok], 50),
        answered_p95_ms=_pct(lat[ok], 95),
        answered_p99_ms=_pct(lat[ok], 99),
        recovery_s=recovery_seconds(samples.due_s, lat, ok, budget_ms) if recovery else None,
        server_cpu_cores=server / samples.wall_s if server is not None else None,
        server_cpu_ms_per_request=server / sent * 1000.0 if server is not None and sent else None,
        client_cpu_cores=samples.client_cpu_s / samples.wall_s,
        error_kinds=samples.error_kinds(),
    )


def cpu_per_refusal_ms(
    base_answered: int, base_loop_cpu_s: float, answered: int, refused: int, loop_cpu_s: float
) -> float | None:
    """The server's CPU per refusal in a step, from its event-loop thread, where a refusal runs
    whole (it is refused before tokenizing): the loop's CPU less each answer's loop CPU as
    measured in a step without refusals (`base_*`), over the refusals."""
    if not refused or not base_answered:
        return None
    per_answer = base_loop_cpu_s / base_answered
    return max(loop_cpu_s - answered * per_answer, 0.0) / refused * 1000.0


def rejected_counts(metrics_text: str) -> dict[str, float]:
    """sentiment_rejected_total by reason, from a /metrics scrape."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("sentiment_rejected_total{"):
            labels, _, value = line.rpartition(" ")
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(value)
    return out


def median_steps(rounds: Sequence[Sequence[dict]]) -> list[dict]:
    """Per step, the median over rounds of every numeric figure (None where no round has one)."""
    out = []
    for k, first in enumerate(rounds[0]):
        merged = {"name": first["name"]}
        for key, value in first.items():
            if key == "name" or isinstance(value, dict):
                continue
            values = [r[k][key] for r in rounds if r[k].get(key) is not None and not _nan(r[k][key])]
            merged[key] = statistics.median(values) if values else None
        out.append(merged)
    return out


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def split_samples(samples: Samples, boundary_s: float, mark: dict, server_cpu0: float) -> tuple[Samples, Samples]:
    """One schedule of two segments (a burst, then what followed it at once) as two steps' samples,
    cut where each request was due; CPU and wall time cut at the boundary's `mark`."""
    first = samples.due_s < boundary_s
    rest = ~first

    def part(
        keep: np.ndarray, rate: float, duration: float, wall: float, client: float, server: float | None, offset: float
    ) -> Samples:
        idx = np.flatnonzero(keep)
        return Samples(
            rate=rate,
            duration_s=duration,
            due_s=samples.due_s[idx] - offset,
            latency_ms=samples.latency_ms[idx],
            status=[samples.status[i] for i in idx],
            send_lag_s=samples.send_lag_s[idx],
            wall_s=wall,
            client_cpu_s=client,
            server_cpu_s=server,
        )

    server_total = samples.server_cpu_s
    server_at = mark["server_cpu_s"] - server_cpu0
    n_first, n_rest = int(first.sum()), int(rest.sum())
    return (
        part(
            first,
            n_first / boundary_s if boundary_s else 0.0,
            boundary_s,
            mark["wall_s"],
            mark["client_cpu_s"],
            server_at,
            0.0,
        ),
        part(
            rest,
            n_rest / max(samples.duration_s - boundary_s, 1e-9),
            samples.duration_s - boundary_s,
            samples.wall_s - mark["wall_s"],
            samples.client_cpu_s - mark["client_cpu_s"],
            None if server_total is None else server_total - server_at,
            boundary_s,
        ),
    )


async def overload_round(
    proc: ServedProcess,
    bodies: Sequence[bytes],
    capacity_rps: float,
    step_s: float,
    budget_ms: float,
    timeout_s: float,
    seed: int,
) -> list[dict]:
    """The five steps against one served process, back to back; the 5x burst and the recovery
    step after it are one schedule (the rate drops at the boundary, with no pause for the
    burst's answers), split by when each request was due."""
    out = []
    async with LeanClient(proc.url) as client:
        requests = [client.build("POST", "/v1/predict", body) for body in bodies]
        start = http_start(client, requests, timeout_s)
        base: tuple[int, float] | None = None  # the first step's (answers, loop CPU), when it refused nothing
        k = 0
        while k < len(STEPS):
            name, multiple = STEPS[k]
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


def run_overload(config, cmd: list[str], bodies: list[bytes], search_capacity) -> dict:
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
    rounds: dict[str, list[list[dict]]] = {name: [] for name, _ in VARIANTS}
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
