"""The SLA gate: read the load test's final statistics, decide PASS or FAIL, say why.

Pure functions over plain numbers, so the verdict is unit-testable without running
locust. The gate is applied to locust's "Aggregated" entry (every request counts); the
per-endpoint rows are reported alongside. The statistics come from the locustfile's
`--summary-json` file, written when locust quits (its CSV can lag by a second). Locust stores response times in buckets
(exact below 100 ms, to 10 ms up to 1 s, to 100 ms up to 10 s), so its percentiles
carry that resolution.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class SlaConfig:
    """Thresholds: a figure passes when it is <= its threshold (exactly at it passes)."""

    p95_ms: float = 200.0
    p99_ms: float | None = None
    max_error_rate: float = 0.01

    def __post_init__(self) -> None:
        if not self.p95_ms > 0:
            raise ValueError(f"p95 threshold must be > 0 ms, got {self.p95_ms}")
        if self.p99_ms is not None and not self.p99_ms > 0:
            raise ValueError(f"p99 threshold must be > 0 ms, got {self.p99_ms}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max error rate must be within [0, 1], got {self.max_error_rate}")


@dataclass(frozen=True)
class EndpointStats:
    """One row of locust's `_stats.csv` (times in ms; percentiles NaN without requests)."""

    name: str
    method: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def error_rate(self) -> float:
        # No requests at all is not "0% errors": the caller treats it as a failure of its own.
        return self.failures / self.requests if self.requests else math.nan


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]
    stats: EndpointStats

    def line(self, sla: SlaConfig) -> str:
        """The report's last line: PASS or FAIL with the figures against their thresholds."""
        s = self.stats
        figures = (
            f"requests={s.requests} rps={s.rps:.1f} p95={_ms(s.p95_ms)} (<= {sla.p95_ms:g} ms)"
            + (f" p99={_ms(s.p99_ms)} (<= {sla.p99_ms:g} ms)" if sla.p99_ms is not None else f" p99={_ms(s.p99_ms)}")
            + f" errors={_pct(s.error_rate)} (<= {sla.max_error_rate:.2%})"
        )
        if self.passed:
            return f"PASS: {figures}"
        return f"FAIL: {'; '.join(self.reasons)} | {figures}"


def evaluate(stats: EndpointStats, sla: SlaConfig) -> Verdict:
    """PASS when requests were made and every threshold holds; otherwise FAIL with reasons."""
    reasons = []
    if stats.requests == 0:
        reasons.append("no requests completed")
    else:
        if stats.error_rate > sla.max_error_rate:
            reasons.append(f"error rate {_pct(stats.error_rate)} > {sla.max_error_rate:.2%}")
        if not stats.p95_ms <= sla.p95_ms:  # NaN fails too
            reasons.append(f"p95 {_ms(stats.p95_ms)} > {sla.p95_ms:g} ms")
        if sla.p99_ms is not None and not stats.p99_ms <= sla.p99_ms:
            reasons.append(f"p99 {_ms(stats.p99_ms)} > {sla.p99_ms:g} ms")
    return Verdict(passed=not reasons, reasons=tuple(reasons), stats=stats)


def read_summary(path: str | Path) -> tuple[list[EndpointStats], EndpointStats]:
    """(per-endpoint rows, the aggregated row) from the locustfile's `--summary-json` file."""
    rows, total = [], None
    for item in json.loads(Path(path).read_text()):
        entry = EndpointStats(
            name=item["name"],
            method=item["method"],
            requests=int(item["requests"]),
            failures=int(item["failures"]),
            rps=float(item["rps"]),
            p50_ms=_num(item["p50_ms"]),
            p95_ms=_num(item["p95_ms"]),
            p99_ms=_num(item["p99_ms"]),
            max_ms=_num(item["max_ms"]),
        )
        if entry.name == AGGREGATED and not entry.method:
            total = entry
        else:
            rows.append(entry)
    if total is None:
        raise ValueError(f"{path} has no {AGGREGATED} entry: not a load-test summary")
    return rows, total


def format_table(rows: list[EndpointStats], total: EndpointStats) -> str:
    header = (
        f"{'endpoint':<34} {'reqs':>7} {'fails':>6} {'err%':>7} {'req/s':>8} "
        f"{'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in [*rows, total]:
        name = f"{s.method} {s.name}".strip()[:34]
        lines.append(
            f"{name:<34} {s.requests:>7} {s.failures:>6} {_pct(s.error_rate):>7} {s.rps:>8.1f} "
            f"{_ms(s.p50_ms):>8} {_ms(s.p95_ms):>8} {_ms(s.p99_ms):>8} {_ms(s.max_ms):>8}"
        )
    return "\n".join(lines)


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}ms"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2%}"
