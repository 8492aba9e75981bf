"""The batch budget from the engine's own cost curve, timed at start-up (CPU only).

Whether batching pays depends on the engine, not on the CPU: on the 2-core Xeon, ONNX Runtime's
dynamic int8 MiniLM ran 150 texts/s alone and 145 in batches of 8, while OpenVINO's static int8
ran 167 and 204 (issue 20). A fixed token budget suits one of them. So after warm-up the runner
times a grid of (batch size, width) shapes, and `plan_batches` reads the curve:

- cost per token at each batch size, relative to a text alone, averaged over the widths timed;
- where the cheapest batch saves at least MIN_GAIN of a token's cost, batching pays: the budget
  holds the smallest batch within NEAR_BEST of the cheapest, texts at the model's max length,
  and a batch waits up to --max-wait-ms for company;
- where it saves less, a text runs alone: the budget is one text at the max length (shorter
  texts still share a run), and no batch waits, since waiting would buy nothing.

The timed points also seed the admission cost model (server/costmodel.py) as (tokens, seconds).
A GPU keeps its fixed wide budget: there the curve falls for hundreds of texts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CURVE_SIZES = (1, 2, 4, 8, 16)
# Below this saving per token, a batch's texts wait for each other for too little: measured
# ORT dynamic int8 batch 8 was 3% dearer per text, OpenVINO static int8 18% cheaper (issue 20).
MIN_GAIN = 0.10
NEAR_BEST = 0.05


@dataclass(frozen=True)
class CurvePoint:
    rows: int
    width: int
    seconds: float  # the fastest of a few runs

    @property
    def tokens(self) -> int:
        return self.rows * self.width

    @property
    def per_token(self) -> float:
        return self.seconds / self.tokens

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "width": self.width, "ms": round(self.seconds * 1000, 3)}


@dataclass(frozen=True)
class BatchPlan:
    max_batch_tokens: int
    max_wait_ms: float
    best_rows: int  # the batch size the budget holds at the max length
    gain: float  # share of a token's cost saved at the cheapest batch size, against a text alone
    relative_cost: dict[int, float]  # batch size -> cost per token / a text alone's, mean over widths
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch_tokens": self.max_batch_tokens,
            "max_wait_ms": self.max_wait_ms,
            "best_rows": self.best_rows,
            "gain": round(self.gain, 4),
            "relative_cost": {str(rows): round(cost, 4) for rows, cost in self.relative_cost.items()},
            "reason": self.reason,
        }


def curve_shapes(max_length: int, max_batch_size: int) -> list[tuple[int, int]]:
    """(batch size, width) pairs to time: a short and a full-length width, batch sizes up to the cap."""
    widths = sorted({max(8, max_length // 4), max_length})
    sizes = [size for size in CURVE_SIZES if size <= max_batch_size] or [1]
    return [(rows, width) for width in widths for rows in sizes]


def time_curve(
    run: Callable[[list[np.ndarray]], object], shapes: Sequence[tuple[int, int]], pad_id: int = 0, repeats: int = 3
) -> list[CurvePoint]:
    """`run` (a runner's predict) timed on each (batch size, width) shape: the fastest of
    `repeats` runs, since the others met a busy core. Called after the runner's warm-up."""
    points = []
    for rows, width in shapes:
        seqs = [np.full(width, pad_id, dtype=np.int64) for _ in range(rows)]
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            run(seqs)
            best = min(best, time.perf_counter() - started)
        points.append(CurvePoint(rows, width, best))
    return points


def relative_costs(points: Sequence[CurvePoint]) -> dict[int, float]:
    """Batch size -> its cost per token over a text alone's at the same width, averaged over the
    widths where both were timed."""
    alone = {p.width: p.per_token for p in points if p.rows == 1 and p.seconds > 0}
    ratios: dict[int, list[float]] = {}
    for p in points:
        if p.width in alone and p.seconds > 0:
            ratios.setdefault(p.rows, []).append(p.per_token / alone[p.width])
    return {rows: sum(r) / len(r) for rows, r in sorted(ratios.items())}


def plan_batches(
    points: Sequence[CurvePoint],
    max_length: int,
    max_wait_ms: float,
    max_batch_size: int,
    min_gain: float = MIN_GAIN,
    near_best: float = NEAR_BEST,
) -> BatchPlan:
    """The token budget and the wait the curve says pay (pure: the tests give it numbers)."""
    costs = relative_costs(points)
    alone = BatchPlan(
        max_batch_tokens=max_length,
        max_wait_ms=0.0,
        best_rows=1,
        gain=0.0,
        relative_cost=costs,
        reason="no timings: a text runs alone",
    )
    if not costs or 1 not in costs:
        return alone
    cheapest = min(costs.values())
    gain = 1.0 - cheapest
    if gain < min_gain:
        best = min(costs, key=lambda rows: costs[rows])
        return BatchPlan(
            max_batch_tokens=max_length,
            max_wait_ms=0.0,
            best_rows=1,
            gain=gain,
            relative_cost=costs,
            reason=(
                f"batching saves {100 * gain:.0f}% per token at most (batch {best}), under {100 * min_gain:.0f}%: "
                "a text at the max length runs alone and no batch waits"
            ),
        )
    rows = min(r for r, cost in costs.items() if cost <= cheapest + near_best)
    rows = min(rows, max_batch_size)
    return BatchPlan(
        max_batch_tokens=rows * max_length,
        max_wait_ms=max_wait_ms,
        best_rows=rows,
        gain=gain,
        relative_cost=costs,
        reason=(
            f"batch {rows} costs {100 * (1 - costs[rows]):.0f}% less per token than a text alone: "
            f"budget {rows} texts at the max length, batches wait up to {max_wait_ms:g} ms"
        ),
    )
