"""What an inference batch costs: seconds = a * tokens + b, fitted online from the server's own batches.

The admission rule (server/admission.py) needs to know how long the work queued ahead of a
new request will take. BentoML's dispatcher fits `a * n + b` over its last batches; ours
counts tokens rather than texts, since on a CPU a text's cost grows with its length (a
256-token review costs ~10x an 8-token one) and a batch of texts is bounded by a token budget.

`tokens` is the sum of the batch's real (unpadded) token counts: what the queue knows about
its texts before they are batched. Padding (and a GPU's shape buckets) is absorbed into the
fitted slope on average.

The fit is exponentially weighted (each batch counts `decay` times less than the next), so
it follows the machine: this shared box's speed moves by up to a third within minutes. When
the recent batches are too alike to fix a slope (every text at the 256-token cap), the last
good line is kept and only rescaled to the recent level, so a run of equal batches cannot
tilt it. The first line goes through the batches the runner times after its warm-up (server/costcurve.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

# The fit averages over about 1/(1 - DECAY) = 100 recent batches: about 1.5 s of batches at
# capacity on the 2-core box, long enough to average out one preempted batch.
DECAY = 0.99
# A slope is fitted only when the batches' token counts spread this much around their mean
# (coefficient of variation); otherwise the last slope is rescaled.
MIN_SPREAD = 0.1


@dataclass(frozen=True)
class Line:
    """seconds = per_token * tokens + per_batch * batches."""

    per_token: float
    per_batch: float

    def seconds(self, tokens: float, batches: float = 1.0) -> float:
        return self.per_token * tokens + self.per_batch * batches


class BatchCostModel:
    """Thread-safe: inference workers `observe`, the event loop reads `line`."""

    def __init__(self, decay: float = DECAY, initial: Line | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._lock = threading.Lock()
        # Exponentially weighted sums of 1, x, y, x*x, x*y.
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.observed = 0
        # Read without the lock: replacing one attribute is atomic under the GIL.
        self.line: Line | None = initial

    def observe(self, tokens: float, seconds: float) -> None:
        """One finished batch: its real token count and the seconds its run took."""
        if tokens <= 0 or seconds <= 0:
            return
        with self._lock:
            d = self.decay
            self._w = d * self._w + 1.0
            self._x = d * self._x + tokens
            self._y = d * self._y + seconds
            self._xx = d * self._xx + tokens * tokens
            self._xy = d * self._xy + tokens * seconds
            self.observed += 1
            self.line = fit(self._w, self._x, self._y, self._xx, self._xy, self.line)


def fit(w: float, sx: float, sy: float, sxx: float, sxy: float, previous: Line | None) -> Line:
    """The weighted least-squares line through the sums (pure: testable with numbers).

    Both coefficients stay >= 0 (a batch never costs less for having more tokens). Where the
    token counts barely spread, or the fit would go negative, the previous line's shape is kept
    and scaled to pass through the weighted mean; with no previous line, through the origin.
    """
    mean_x, mean_y = sx / w, sy / w
    var_x = max(sxx / w - mean_x * mean_x, 0.0)
    if var_x >= (MIN_SPREAD * mean_x) ** 2 and mean_x > 0:
        slope = (sxy / w - mean_x * mean_y) / var_x
        intercept = mean_y - slope * mean_x
        if slope >= 0 and intercept >= 0:
            return Line(slope, intercept)
    if previous is not None and previous.seconds(mean_x) > 0:
        scale = mean_y / previous.seconds(mean_x)
        return Line(previous.per_token * scale, previous.per_batch * scale)
    return Line(mean_y / mean_x if mean_x > 0 else 0.0, 0.0)


def seeded(timings: Sequence[tuple[int, float]], decay: float = DECAY) -> BatchCostModel:
    """A cost model whose first line goes through start-up timings (none: no line yet, and
    admission lets everything in until the first batches are timed)."""
    model = BatchCostModel(decay)
    for tokens, seconds in timings:
        model.observe(tokens, seconds)
    return model
