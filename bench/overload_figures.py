"""The overload benchmark's figures, as pure functions of one step's samples (bench/overload.py
runs the steps): goodput, refusals, latency of the answered, recovery after a burst, CPU per
refusal, and the median over rounds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.openloop import Samples

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
