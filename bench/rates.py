"""The rate search's grid, as pure functions of the rates tried so far (testable with numbers).

A search starts at a share of the closed-loop probe's throughput, grows until a rate misses
the SLA, then bisects. bench/search.py runs it against a target; bench/queueing.py runs it
against the ideal server in simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SEARCH_START = 0.7  # a rate search's first open-loop rate, as a share of the closed-loop probe's throughput
SEARCH_GROWTH = 1.3  # the search's step up until a rate misses


def next_rate(
    history: Sequence[tuple[float, bool]],
    start: float,
    growth: float = SEARCH_GROWTH,
    tolerance: float = 0.03,
    floor: float = 0.1,
    max_steps: int | None = None,
) -> float | None:
    """The next rate to try, or None when the search is done (pure: testable with numbers).

    `history` holds (rate, met_sla). Until a rate fails, grow the highest rate tried by
    `growth`; then bisect between the highest passing rate below the lowest failing one
    (`lo`, 0 if none) and that failing rate (`hi`). Done when the bracket is within
    `tolerance` of `hi`, or `hi` < `floor` (nothing meets the SLA), or after `max_steps`
    rates (when given).
    """
    if max_steps is not None and len(history) >= max_steps:
        return None
    if not history:
        return start
    failed = [r for r, ok in history if not ok]
    if not failed:
        return max(r for r, _ in history) * growth
    hi = min(failed)
    lo = max((r for r, ok in history if ok and r < hi), default=0.0)
    if hi < floor or hi - lo <= tolerance * hi:
        return None
    return (lo + hi) / 2


def capacity(history: Sequence[tuple[float, bool]]) -> float:
    """Highest passing rate below the lowest failing one (0.0 when nothing passed)."""
    failed = [r for r, ok in history if not ok]
    hi = min(failed) if failed else math.inf
    return max((r for r, ok in history if ok and r < hi), default=0.0)
