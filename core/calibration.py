"""Temperature scaling (Guo et al., 2017): one scalar T > 0 that divides the logits before softmax.

The exporter fits T on validation logits of the graph it ships; the server divides by it. T never
changes a prediction's label (dividing by a positive number keeps every row's order), only how
sure the probabilities say it is. numpy only: the serving process imports this module's callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.probs import softmax

# The search range for T. A fine-tuned classifier's T is typically 1-3, an under-trained one's far
# below 1 (a quick 512-review fine-tune measured 0.035); a bound reached means the fit had nothing
# to fit (a model right on every review wants T -> 0, one that guesses T -> infinity).
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 1e3
ECE_BINS = 15
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def scaled_probs(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(logits / T); T None (an uncalibrated model) is softmax(logits)."""
    if temperature is None:
        return softmax(logits)
    return softmax(np.asarray(logits, dtype=np.float32) / np.float32(temperature))


def _checked(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (len(z),) or len(z) == 0:
        raise ValueError(f"need logits [n, classes] and n labels, n >= 1; got {z.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be in [0, {z.shape[1]}), got {y.min()}..{y.max()}")
    return z, y


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T), in float64."""
    z, y = _checked(logits, labels)
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    low: float = MIN_TEMPERATURE,
    high: float = MAX_TEMPERATURE,
    tol: float = 1e-6,
) -> float:
    """The T in [low, high] that minimises the mean NLL of `labels` under softmax(logits / T).

    The NLL is convex in 1/T (a log-sum-exp of functions linear in 1/T, less one linear term), so
    it is unimodal in log T too, and a golden-section search on log T finds its minimum: no
    gradient, no scipy. `tol` is the final bracket's width in log T (a relative error in T).
    """
    z, y = _checked(logits, labels)
    if not 0.0 < low < high:
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(z, y, math.exp(c)), nll(z, y, math.exp(d))
    while b - a > tol:
        if fc <= fd:  # the minimum is in [a, d]
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(z, y, math.exp(c))
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(z, y, math.exp(d))
    return math.exp((a + b) / 2.0)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: [lower, upper), the last one closed at 1."""

    lower: float
    upper: float
    count: int
    accuracy: float | None  # None for an empty bin
    confidence: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "count": self.count,
            "accuracy": self.accuracy,
            "confidence": self.confidence,
        }


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Equal-width bins of the predicted label's probability (the confidence) over [0, 1]: how
    many predictions fell in each, how often they were right, and how sure they said they were."""
    p, y = _checked(probs, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    # bin k holds [k/bins, (k+1)/bins); a confidence of exactly 1 goes in the last bin
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    out = []
    for k in range(bins):
        members = index == k
        n = int(members.sum())
        out.append(
            ReliabilityBin(
                lower=k / bins,
                upper=(k + 1) / bins,
                count=n,
                accuracy=float(correct[members].mean()) if n else None,
                confidence=float(confidence[members].mean()) if n else None,
            )
        )
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between accuracy and confidence in each confidence bin, weighted by the bin's
    share of the predictions (0 = a model exactly as sure as it is right)."""
    n = len(labels)
    return float(
        sum(
            b.count / n * abs(b.accuracy - b.confidence)
            for b in reliability_bins(probs, labels, bins)
            if b.accuracy is not None and b.confidence is not None
        )
    )


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean())


def check_temperature(value: object) -> float:
    """A stored temperature as a float; ValueError unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"temperature must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {value!r}")
    return float(value)
