"""How close to the ceiling any server can get under random arrivals: a queueing bound.

The ceiling is throughput with a queue that is never empty. Under Poisson arrivals a server
that must keep p95 latency under a limit cannot run its workers 100% busy: bursts queue up,
and the closer the load is to the ceiling, the longer the queue's excursions. This module
simulates the ideal server for the benchmark's texts - `workers` FIFO workers, each text
costing its share of the ceiling (proportional to its tokens), no HTTP, no tokenizer, no
overhead of any kind - and finds the highest share of the ceiling at which its p95 meets
the limit. A real server's ratio to the ceiling is below this bound; the gap between the
two is what the server's own costs lose.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from bench.openloop import step_duration
from bench.rates import capacity, next_rate


def service_times(tokens: Sequence[int], ceiling_texts_per_s: float, workers: int) -> np.ndarray:
    """Seconds each text occupies one worker, so that `workers` workers busy all the time
    do `ceiling_texts_per_s` on average; a text costs in proportion to its tokens."""
    cost = np.asarray(tokens, dtype=float)
    if cost.size == 0 or ceiling_texts_per_s <= 0 or workers < 1:
        raise ValueError("need tokens, a positive ceiling and at least one worker")
    return cost / cost.mean() * workers / ceiling_texts_per_s


def _fifo_latencies(times: np.ndarray, work: np.ndarray, workers: int) -> np.ndarray:
    """Seconds from arrival to answer of each arrival (sorted `times`), `workers` FIFO
    workers, idle at the start."""
    free = [0.0] * workers  # when each worker next becomes free (a heap)
    latency = np.empty(len(times))
    for i in range(len(times)):
        start = max(heapq.heappop(free), times[i])
        heapq.heappush(free, start + work[i])
        latency[i] = start + work[i] - times[i]
    return latency


def fifo_p95_ms(service_s: np.ndarray, workers: int, rate: float, arrivals: int = 40_000, seed: int = 0) -> float:
    """p95 latency (queue wait + service), ms, of `workers` FIFO workers under Poisson
    arrivals at `rate`/s, each arrival drawing its service time from `service_s`."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, arrivals))
    latency = _fifo_latencies(times, service_s[rng.integers(0, len(service_s), arrivals)], workers)
    return float(np.percentile(latency[arrivals // 20 :], 95) * 1000.0)  # the first 5%: warm-up


def bound_fraction(
    tokens: Sequence[int],
    ceiling_texts_per_s: float,
    workers: int,
    p95_limit_ms: float,
    tolerance: float = 0.005,
    arrivals: int = 40_000,
    seed: int = 0,
) -> float:
    """Highest load, as a share of the ceiling, at which the ideal server's p95 meets
    `p95_limit_ms` (bisection; 0.0 when even light load misses it)."""
    service = service_times(tokens, ceiling_texts_per_s, workers)

    def meets(fraction: float) -> bool:
        return fifo_p95_ms(service, workers, fraction * ceiling_texts_per_s, arrivals, seed) <= p95_limit_ms

    if not meets(tolerance):
        return 0.0
    lo, hi = tolerance, 1.0
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def searched_fractions(
    tokens: Sequence[int],
    ceiling_texts_per_s: float,
    workers: int,
    p95_limit_ms: float,
    start_rate: float,
    step_s: float,
    max_steps: int,
    searches: int = 40,
    seed: int = 0,
) -> list[float]:
    """The ideal server measured the way the benchmark measures a real one: each search runs
    open-loop steps exactly as bench/search.py does (Poisson arrivals for `step_duration`
    seconds, an empty queue at the start, p95 over all of the step's requests; the same
    start rate, growth, bisection and step limit). Returns each of `searches` searches'
    capacity as a share of the ceiling.

    `bound_fraction` is the ideal server's capacity in the limit of endless steps. A search
    of finite steps finds another share: more where steps are short (each starts with an
    empty queue), less where its coarse grid of rates steps over the bound, and not the same
    share twice, since each step's p95 is one sample. A real server compares fairly with what
    the ideal one finds under the same search, from the same start rate.
    """
    service = service_times(tokens, ceiling_texts_per_s, workers)
    rng = np.random.default_rng(seed)

    def meets(rate: float) -> bool:
        duration = step_duration(rate, step_s)
        times = np.sort(rng.uniform(0.0, duration, rng.poisson(rate * duration)))
        if len(times) == 0:
            return True
        latency = _fifo_latencies(times, service[rng.integers(0, len(service), len(times))], workers)
        return float(np.percentile(latency, 95) * 1000.0) <= p95_limit_ms

    found = []
    for _ in range(searches):
        history: list[tuple[float, bool]] = []
        while (rate := next_rate(history, start_rate, max_steps=max_steps)) is not None:
            history.append((rate, meets(rate)))
        found.append(capacity(history) / ceiling_texts_per_s)
    return found
