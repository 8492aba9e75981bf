"""Open-loop load: Poisson arrivals at a fixed rate, one step at a time (the search over
rates is bench/rates.py and bench/search.py).

Open loop means each request is sent at its scheduled arrival time whatever the state of
earlier ones, as independent users do; a closed loop (N users waiting for answers) slows
down with the server and hides queueing. Latency is measured from the *scheduled* arrival
time, so any delay in the generator itself counts against the server (conservative), and
the generator's own send lag is reported to show it was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from bench.httpclient import LeanClient

MIN_REQUESTS = 40


@dataclass(frozen=True)
class StepResult:
    """One fixed-rate step. Latencies in ms over every request (errors included)."""

    rate: float
    duration_s: float
    sent: int
    ok: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    achieved_rps: float  # successful answers per second of the step's wall time
    send_lag_p99_ms: float  # how late the generator sent, vs the schedule
    client_cpu_cores: float  # this process's CPU time / wall time
    server_cpu_cores: float | None = None
    # Cores busy with anything but the server and this generator: other work on a shared
    # machine, which slows the server and makes the step unrepresentative.
    other_cpu_cores: float | None = None
    error_kinds: dict = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.sent if self.sent else 1.0

    def meets(self, p95_ms: float, max_error_rate: float) -> bool:
        return self.sent > 0 and self.p95_ms <= p95_ms and self.error_rate <= max_error_rate

    def to_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}


def step_duration(rate: float, duration_s: float) -> float:
    """A step's length at `rate`: at low rates stretched (up to 3x) so that its percentiles
    rest on at least MIN_REQUESTS requests."""
    return min(max(duration_s, MIN_REQUESTS / rate), 3 * duration_s)


def poisson_arrivals(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival offsets (s) of a Poisson process of `rate`/s within [0, duration_s)."""
    out, t = [], rng.expovariate(rate)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def payloads(texts: Sequence[str]) -> list[bytes]:
    """One single-text request body per review, serialised once, outside the timed loop."""
    return [json.dumps({"text": t}).encode() for t in texts]


# Starts request number k (an index into the step's items); its future resolves to a status
# (200 = success) or raises (a timeout, a refused connection, a server-side exception).
Start = Callable[[int], "asyncio.Future[int]"]


def http_status(answer: tuple[int, bytes]) -> int:
    """The status of a LeanClient answer (status, body)."""
    return answer[0]


def http_start(client: LeanClient, requests: Sequence[bytes], timeout_s: float) -> Start:
    """Requests built by `client.build`, each with a `timeout_s` client timeout."""

    def start(k: int) -> asyncio.Future:
        return client.request(requests[k], timeout_s)

    return start


async def run_step(
    client: LeanClient,
    requests: Sequence[bytes],
    rate: float,
    duration_s: float,
    seed: int = 0,
    timeout_s: float = 5.0,
    server_cpu=None,
) -> StepResult:
    """Send Poisson arrivals at `rate`/s for `duration_s` over HTTP and wait for every answer.

    `requests` are built by `client.build`; each has a `timeout_s` client timeout.
    `server_cpu`, when given, is a zero-argument callable returning the server's CPU seconds.
    """
    return await open_loop_step(
        http_start(client, requests, timeout_s),
        len(requests),
        rate,
        duration_s,
        seed,
        server_cpu,
        status_of=http_status,
    )


@dataclass
class Samples:
    """Every request of one open-loop step: when it was due (seconds from the step's start),
    its latency from then (ms) and its status (200, another HTTP status, or an exception's name)."""

    rate: float
    duration_s: float
    due_s: np.ndarray
    latency_ms: np.ndarray
    status: list
    send_lag_s: np.ndarray
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None = None
    system_busy_s: float | None = None
    marks: list = field(default_factory=list)  # figures taken at segment boundaries (open_loop_samples' `then`)

    def error_kinds(self) -> dict[str, int]:
        """How many requests ended in each status other than 200, by status, sorted."""
        kinds: dict[str, int] = {}
        for status in self.status:
            if status != 200:
                kinds[str(status)] = kinds.get(str(status), 0) + 1
        return dict(sorted(kinds.items()))

    def step_result(self) -> StepResult:
        sent = len(self.status)
        kinds = self.error_kinds()
        errors = sum(kinds.values())
        wall, cpu = self.wall_s, self.client_cpu_s
        srv = self.server_cpu_s / wall if self.server_cpu_s is not None else None
        other = (self.system_busy_s / wall - cpu / wall - (srv or 0.0)) if self.system_busy_s is not None else None
        pct = (lambda q: float(np.percentile(self.latency_ms, q))) if sent else (lambda q: math.nan)
        return StepResult(
            rate=self.rate,
            duration_s=self.duration_s,
            sent=sent,
            ok=sent - errors,
            errors=errors,
            p50_ms=pct(50),
            p95_ms=pct(95),
            p99_ms=pct(99),
            max_ms=pct(100),
            achieved_rps=(sent - errors) / wall,
            send_lag_p99_ms=float(np.percentile(self.send_lag_s, 99) * 1000.0) if sent else 0.0,
            client_cpu_cores=cpu / wall,
            server_cpu_cores=srv,
            other_cpu_cores=max(0.0, other) if other is not None else None,
            error_kinds=kinds,
        )


async def open_loop_step(
    start: Start,
    items: int,
    rate: float,
    duration_s: float,
    seed: int = 0,
    server_cpu=None,
    status_of=lambda result: 200,
) -> StepResult:
    """Poisson arrivals at `rate`/s for `duration_s`, each calling `start` on the next of
    `items` (from a seeded offset); waits for every answer. `status_of` turns a future's
    result into a status."""
    samples = await open_loop_samples(start, items, rate, duration_s, seed, server_cpu, status_of)
    return samples.step_result()


async def open_loop_samples(
    start: Start,
    items: int,
    rate: float,
    duration_s: float,
    seed: int = 0,
    server_cpu=None,
    status_of=lambda result: 200,
    stretch: bool = True,
    then: Sequence[tuple[float, float]] = (),
    mark=None,
) -> Samples:
    """As open_loop_step, but every request's figures (`stretch=False`: exactly `duration_s`,
    however few requests that makes).

    `then`: further (rate, seconds) segments, one schedule with the first: the rate changes at
    each boundary without a pause (a burst, then what follows it at once). At each boundary
    `mark()` (when given) is called and its result kept in `Samples.marks`, with this process's
    CPU seconds and the time, so a caller can split the figures by segment (split_samples).

    Bounded: about rate * duration_s requests. Each arrival is a timer callback (no task,
    no sleep per request): the generator shares the CPUs with the server, so what it spends
    per request is measured and kept small.
    """
    rng = random.Random(seed)
    duration_s = step_duration(rate, duration_s) if stretch else duration_s
    arrivals = poisson_arrivals(rate, duration_s, rng)
    boundaries = []
    total = duration_s
    for next_rate_, seconds in then:
        boundaries.append(total)
        arrivals += [total + t for t in poisson_arrivals(next_rate_, seconds, rng)]
        total += seconds
    offset = rng.randrange(items)
    loop = asyncio.get_running_loop()
    latencies = np.full(len(arrivals), np.nan)
    lags = np.zeros(len(arrivals))
    statuses: list = [None] * len(arrivals)
    finished = loop.create_future()
    pending = [len(arrivals)]

    def answered(i: int, due: float, fut: asyncio.Future) -> None:
        latencies[i] = (loop.time() - due) * 1000.0
        exc = fut.exception()
        if exc is None:
            statuses[i] = status_of(fut.result())
        else:
            statuses[i] = "timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
        pending[0] -= 1
        if pending[0] == 0 and not finished.done():
            finished.set_result(None)

    def fire(i: int, due: float) -> None:
        lags[i] = loop.time() - due
        start((offset + i) % items).add_done_callback(functools.partial(answered, i, due))

    cpu0, srv0, sys0, wall0 = (
        _cpu_seconds(),
        server_cpu() if server_cpu else None,
        _system_busy_seconds(),
        time.perf_counter(),
    )
    begin = loop.time() + 0.05
    timers = [loop.call_at(begin + at, fire, i, begin + at) for i, at in enumerate(arrivals)]
    marks: list[dict] = []

    def boundary() -> None:
        marks.append(
            {"client_cpu_s": _cpu_seconds() - cpu0, "wall_s": time.perf_counter() - wall0, **(mark() if mark else {})}
        )

    timers += [loop.call_at(begin + at, boundary) for at in boundaries]
    try:
        if arrivals:
            await finished
    finally:
        for timer in timers:  # cancelled from outside: send nothing more
            timer.cancel()
    wall = time.perf_counter() - wall0
    busy = _system_busy_seconds()
    return Samples(
        rate=rate,
        duration_s=total,
        due_s=np.asarray(arrivals, dtype=float),
        latency_ms=latencies,
        marks=marks,
        status=statuses,
        send_lag_s=lags,
        wall_s=wall,
        client_cpu_s=_cpu_seconds() - cpu0,
        server_cpu_s=server_cpu() - srv0 if server_cpu and srv0 is not None else None,
        system_busy_s=busy - sys0 if busy is not None and sys0 is not None else None,
    )


async def closed_loop_throughput(
    client: LeanClient, requests: Sequence[bytes], concurrency: int, duration_s: float, timeout_s: float = 10.0
) -> float:
    """Successful HTTP answers per second with `concurrency` clients sending back to back."""
    return await closed_loop(
        http_start(client, requests, timeout_s), len(requests), concurrency, duration_s, status_of=http_status
    )


async def closed_loop(
    start: Start, items: int, concurrency: int, duration_s: float, status_of=lambda result: 200
) -> float:
    """Successes per second with `concurrency` callers starting the next item as soon as
    their last one is answered. Used only to bracket the open-loop search: the SLA-bound
    rate cannot exceed it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    done = 0
    counter = iter(range(1 << 62))

    async def caller() -> None:
        nonlocal done
        while loop.time() < end:
            try:
                result = await start(next(counter) % items)
            except Exception:
                continue
            done += status_of(result) == 200  # after the await: `done += await ...` would lose updates

    t0 = loop.time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (loop.time() - t0)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def wait_for_quiet(
    max_other_cores: float, max_wait_s: float, own_cpu=None, interval_s: float = 1.0
) -> float | None:
    """Wait (at most `max_wait_s`) until processes other than this one and `own_cpu`'s keep
    no more than `max_other_cores` busy; returns the last reading (None without /proc/stat).

    On a shared machine a step measured while someone else's job runs says more about that
    job than about the server.
    """
    if max_wait_s <= 0:
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while True:
        busy0, mine0, srv0, t0 = _system_busy_seconds(), _cpu_seconds(), own_cpu() if own_cpu else 0.0, loop.time()
        await asyncio.sleep(interval_s)
        busy1, wall = _system_busy_seconds(), loop.time() - t0
        if busy0 is None or busy1 is None:
            return None
        other = (busy1 - busy0 - (_cpu_seconds() - mine0) - ((own_cpu() if own_cpu else 0.0) - srv0)) / wall
        if other <= max_other_cores or loop.time() >= deadline:
            return max(0.0, other)


def _system_busy_seconds() -> float | None:
    """CPU seconds all CPUs of the machine spent busy (not idle or waiting on I/O), from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")
