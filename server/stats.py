"""GET /v1/stats: a few live figures as JSON, read from the registry that GET /metrics renders.

With `--processes N` that registry is prometheus-client's multiprocess collector, so the
figures cover every process, whichever one answers. Counters are totals since start: a
client computes rates (and a recent p95, from the bucket counts) between two polls, as
Prometheus' rate() and histogram_quantile() do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import Metric

from server.handlers import json_response
from server.state import METRICS

# The route whose requests the figures are about (the name server/app.py gives POST /v1/predict).
PREDICT_ENDPOINT = "predict"


@dataclass
class _Histogram:
    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def add(self, suffix: str, labels: dict[str, str], value: float) -> None:
        if suffix == "_count":
            self.count += value
        elif suffix == "_sum":
            self.total += value
        elif suffix == "_bucket":
            le = float(labels["le"])
            self.buckets[le] = self.buckets.get(le, 0.0) + value


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float], count: float) -> float | None:
    """The q-quantile of a histogram, as Prometheus' histogram_quantile() estimates it: linear
    within the bucket the rank falls in (the first bucket starts at 0), and the highest finite
    bound when it falls in +Inf. None without observations. The playground's JS does the same."""
    if count <= 0 or not bounds:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for bound, seen in zip(bounds, cumulative):
        if seen >= rank:
            return lower + (bound - lower) * (rank - below) / (seen - below)
        lower, below = bound, seen
    return bounds[-1]


def snapshot(families: Iterable[Metric]) -> dict[str, Any]:
    """The figures from a registry's metric families (see the Stats schema in server/openapi.py)."""
    by_code: dict[str, float] = {}
    rejected: dict[str, float] = {}
    latency, batches = _Histogram(), _Histogram()
    gauges = {"sentiment_inflight_requests": 0.0, "sentiment_queue_depth": 0.0}
    for family in families:
        for s in family.samples:
            if s.name == "sentiment_requests_total" and s.labels.get("endpoint") == PREDICT_ENDPOINT:
                by_code[s.labels["code"]] = by_code.get(s.labels["code"], 0.0) + s.value
            elif s.name == "sentiment_rejected_total":
                rejected[s.labels["reason"]] = rejected.get(s.labels["reason"], 0.0) + s.value
            elif s.name in gauges:  # livesum under --processes: already one sample
                gauges[s.name] += s.value
            elif s.name.startswith("sentiment_request_duration_seconds_"):
                if s.labels.get("endpoint") == PREDICT_ENDPOINT:
                    latency.add(s.name.removeprefix("sentiment_request_duration_seconds"), s.labels, s.value)
            elif s.name.startswith("sentiment_batch_size_"):
                batches.add(s.name.removeprefix("sentiment_batch_size"), s.labels, s.value)
    bounds = sorted(b for b in latency.buckets if math.isfinite(b))
    cumulative = [int(latency.buckets[b]) for b in bounds]
    return {
        "requests": {"total": int(sum(by_code.values())), "by_code": {c: int(n) for c, n in sorted(by_code.items())}},
        "latency_seconds": {
            "count": int(latency.count),
            "sum": latency.total,
            "p50": quantile(0.5, bounds, cumulative, latency.count),
            "p95": quantile(0.95, bounds, cumulative, latency.count),
            "buckets": {"le": bounds, "cumulative": cumulative},
        },
        "batches": {
            "count": int(batches.count),
            "texts": int(batches.total),
            "mean_size": batches.total / batches.count if batches.count else None,
        },
        "rejected": {
            "total": int(sum(rejected.values())),
            "by_reason": {r: int(n) for r, n in sorted(rejected.items())},
        },
        "inflight": int(gauges["sentiment_inflight_requests"]),
        "queue_depth": int(gauges["sentiment_queue_depth"]),
    }


async def stats_handler(request: web.Request) -> web.Response:
    return json_response(snapshot(request.app[METRICS].exposed().collect()))
