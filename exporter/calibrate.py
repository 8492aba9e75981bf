"""Calibration at export time: the temperature the server divides logits by, its report, its plot.

The temperature is fitted on the logits of the graph being shipped (int8 on the CPU target), for
the parity gate's validation reviews: the served model's own scores, not PyTorch's. The report
gives the expected calibration error before and after on those reviews and, where the data has a
test split, on held-out test reviews scored through the model directory as the server reads it.
The maths is core/calibration.py's (the server's too); matplotlib is imported here only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import (
    ECE_BINS,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    accuracy,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    scaled_probs,
)
from core.modeldir import RELIABILITY_FILE
from core.probs import softmax
from core.tokenization import TextEncoder
from exporter.compare import batched_probs, onnx_logits

log = logging.getLogger("exporter")
METHOD = "temperature scaling: probabilities = softmax(logits / temperature), fitted by minimising the NLL"


def split_figures(logits: np.ndarray, labels: np.ndarray, temperature: float, source: str) -> dict[str, Any]:
    """ECE, accuracy and NLL before and after the temperature, and both reliability curves.
    Raises RuntimeError if the temperature changed a single label (it cannot, for T > 0)."""
    before, after = softmax(logits), scaled_probs(logits, temperature)
    if not np.array_equal(before.argmax(axis=1), after.argmax(axis=1)):
        raise RuntimeError("temperature scaling changed a predicted label; refusing to ship it")
    figures = {
        "source": source,
        "samples": len(labels),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "accuracy_before": accuracy(before, labels),
        "accuracy_after": accuracy(after, labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
        "reliability_before": [b.to_dict() for b in reliability_bins(before, labels)],
        "reliability_after": [b.to_dict() for b in reliability_bins(after, labels)],
    }
    assert figures["accuracy_before"] == figures["accuracy_after"]  # the labels are the same
    return figures


def fit(logits: np.ndarray, labels: list[int], source: str) -> tuple[float, dict[str, Any]]:
    """The temperature for these validation logits, and the report's block (without test)."""
    y = np.asarray(labels)
    temperature = fit_temperature(logits, y)
    at_bound = not MIN_TEMPERATURE * 1.01 < temperature < MAX_TEMPERATURE / 1.01
    if at_bound:  # e.g. a model right on every fitting review: the NLL falls all the way to the bound
        log.warning("calibration: the fitted temperature %.4g is at its search bound", temperature)
    validation = split_figures(logits, y, temperature, source)
    log.info(
        "calibration: temperature %.4f, ECE %.4f -> %.4f on %d validation reviews",
        temperature,
        validation["ece_before"],
        validation["ece_after"],
        len(y),
    )
    block = {
        "method": METHOD,
        "temperature": temperature,
        "temperature_bounds": [MIN_TEMPERATURE, MAX_TEMPERATURE],
        "at_bound": at_bound,
        "ece_bins": ECE_BINS,
        "validation": validation,
        "test": None,
        "reliability_diagram": RELIABILITY_FILE,
    }
    return temperature, block


def skipped(reason: str) -> dict[str, Any]:
    """The report's block for an export that fitted no temperature (the server serves plain softmax)."""
    return {"method": None, "temperature": None, "skipped": reason}


def held_out_logits(
    session: Any,
    encoder: TextEncoder,
    texts: list[str],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The graph's logits for held-out reviews, ids from `encoder` (the model directory's)."""
    engines = {"onnx": lambda ids, mask: onnx_logits(session, ids, mask)}
    return batched_probs(engines, encoder, texts, batch_size, progress)["onnx"]


def plot_reliability(path: Path, splits: Mapping[str, Mapping[str, Any]], temperature: float) -> None:
    """One panel per split: accuracy against confidence per bin, before and after the temperature
    (the diagonal is perfect calibration), with the count of predictions per bin beneath."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display

    fig = Figure(figsize=(5.2 * len(splits), 5.6))
    grid = fig.add_gridspec(2, len(splits), height_ratios=(3, 1))
    for col, (name, figures) in enumerate(splits.items()):
        ax, hist = fig.add_subplot(grid[0, col]), fig.add_subplot(grid[1, col])
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        for key, label, color in (
            ("before", "logits (T = 1)", "C3"),
            ("after", f"logits / {temperature:.3f}", "C0"),
        ):
            rows = [b for b in figures[f"reliability_{key}"] if b["count"]]
            ece = figures[f"ece_{key}"]
            ax.plot(
                [b["confidence"] for b in rows],
                [b["accuracy"] for b in rows],
                marker="o",
                color=color,
                label=f"{label}: ECE {ece:.4f}",
            )
            centres = [(b["lower"] + b["upper"]) / 2 for b in figures[f"reliability_{key}"]]
            width = 1.0 / len(centres) / 2.2
            offset = -width / 2 if key == "before" else width / 2
            hist.bar(
                [c + offset for c in centres],
                [b["count"] for b in figures[f"reliability_{key}"]],
                width=width,
                color=color,
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: {figures['samples']} reviews, accuracy {figures['accuracy_after']:.4f}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        hist.set_xlim(0, 1)
        hist.set_xlabel("confidence (the predicted label's probability)")
        hist.set_ylabel("reviews")
    fig.suptitle("Reliability diagram (temperature scaling)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
