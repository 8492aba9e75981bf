"""The monitor's report: report.md and its three plots (label share per hour, confidence, input
length against the reference). matplotlib is imported here only, when a report is written."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.modeldir import ModelDir
from core.reference import TOKEN_EDGES, InputReference, token_counts

if TYPE_CHECKING:
    from server.monitor import Check, LogWindow

HOURS_IN_TABLE = 48  # the plot shows every hour; the table the latest
LOW_CONFIDENCE = 0.6


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def bin_names(edges: Sequence[int]) -> list[str]:
    upper = [f"{lo}-{hi - 1}" for lo, hi in pairwise(edges)]
    return [*upper, f"{edges[-1]}+"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def plot_label_share(path: Path, window: LogWindow, ref: InputReference | None, margin: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    hours = [datetime.fromtimestamp(h, timezone.utc) for h, _ in window.hourly]
    for i, label in enumerate(
        sorted(set(window.label_counts) | set(ref.label_share if ref and ref.label_share else ()))
    ):
        color = f"C{i}"
        shares = [counts.get(label, 0) / max(1, sum(counts.values())) for _, counts in window.hourly]
        ax.plot(hours, shares, marker="o", color=color, label=f"{label} (log)")
        expected = ref.label_share.get(label) if ref and ref.label_share else None
        if expected is not None:
            ax.axhline(expected, color=color, linestyle="--", linewidth=1, label=f"{label} (training data)")
            ax.axhspan(expected - margin, expected + margin, color=color, alpha=0.08)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of answered texts")
    ax.set_title("Label share per hour (band: the drift margin around the training data's share)")
    ax.legend(fontsize=8, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confidence(path: Path, window: LogWindow) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(window.scores, bins=np.linspace(0, 1, 41), color="C0")
    ax.axvline(LOW_CONFIDENCE, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("the predicted label's probability")
    ax.set_ylabel("texts")
    ax.set_title("Confidence")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def length_shares(window: LogWindow, ref: InputReference | None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    edges = ref.edges if ref else TOKEN_EDGES
    seen = np.asarray(token_counts(window.tokens.tolist(), edges), dtype=np.float64)
    seen = seen / seen.sum() if seen.sum() else seen
    expected = None
    if ref is not None:
        expected = np.asarray(ref.counts, dtype=np.float64)
        expected = expected / expected.sum()
    return bin_names(edges), seen, expected


def plot_input_length(path: Path, window: LogWindow, ref: InputReference | None) -> None:
    plt = _pyplot()
    names, seen, expected = length_shares(window, ref)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.4 if expected is not None else 0.8
    ax.bar(x - (width / 2 if expected is not None else 0), seen, width, label="log", color="C0")
    if expected is not None:
        ax.bar(x + width / 2, expected, width, label="evaluation data (export)", color="C1")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("tokens the model saw ([CLS] and [SEP] included)")
    ax.set_ylabel("share of texts")
    ax.set_title("Input length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pct(value: float) -> str:
    return f"{value:.1%}"


def markdown(
    window: LogWindow, ref: InputReference | None, checks: Sequence[Check], note: str | None, model: ModelDir
) -> str:
    serving = model.serving
    drifted = [c for c in checks if c.drift]
    lines = [
        "# Prediction monitor",
        "",
        f"- Log window: {when(window.start)} to {when(window.end)}: {window.rows} rows, "
        f"{window.answered} answered texts, statuses "
        + ", ".join(f"{status}: {n}" for status, n in sorted(window.statuses.items())),
        "- Models in the log: " + ", ".join(f"{name} {version} ({n} rows)" for name, version, n in window.models),
        f"- Reference: {model.path} ({serving.get('model_name', '?')} {serving.get('model_version', '?')})",
        "",
        "## Drift",
        "",
        "**DRIFT flagged: " + "; ".join(c.name for c in drifted) + ".**" if drifted else "No drift flagged.",
        "",
        "| check | value | limit | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for c in checks:
        value = "-" if c.value is None else f"{c.value:.3f}"
        verdict = "not judged" if c.value is None else "**DRIFT**" if c.drift else "ok"
        lines.append(f"| {c.name} | {value} | {c.limit:g} | {verdict}: {c.detail} |")
    if note:
        lines += ["", f"> {note}"]
    versions = {version for _, version, _ in window.models}
    if serving.get("model_version") not in versions:
        lines += ["", f"> The log holds no rows of the model directory's version ({serving.get('model_version')})."]
    lines += ["", "## Label share per hour", "", "![label share per hour](label_share.png)", ""]
    labels = sorted(set(window.label_counts) | set(ref.label_share if ref and ref.label_share else ()))
    if ref and ref.label_share:
        lines.append(
            "Training data: "
            + ", ".join(f"{k} {pct(v)}" for k, v in sorted(ref.label_share.items()))
            + f" ({ref.label_source}). Whole window: "
            + ", ".join(f"{k} {pct(v / max(1, window.answered))}" for k, v in window.label_counts.items())
            + "."
        )
        lines.append("")
    lines += ["| hour | texts | " + " | ".join(labels) + " |", "| --- | --- |" + " --- |" * len(labels)]
    for hour, counts in window.hourly[-HOURS_IN_TABLE:]:
        total = sum(counts.values())
        lines.append(f"| {when(hour)} | {total} | " + " | ".join(pct(counts.get(k, 0) / total) for k in labels) + " |")
    scores = window.scores
    lines += ["", "## Confidence", "", "![confidence](confidence.png)", ""]
    if len(scores):
        lines.append(
            f"Mean {scores.mean():.3f}, median {np.median(scores):.3f}; "
            f"{pct(float((scores < LOW_CONFIDENCE).mean()))} of the texts below {LOW_CONFIDENCE}."
        )
    names, seen, expected = length_shares(window, ref)
    lines += ["", "## Input length", "", "![input length](input_length.png)", ""]
    if len(window.tokens):
        lines.append(
            f"Median {np.median(window.tokens):.0f} tokens; {pct(window.truncated / len(window.tokens))} truncated."
        )
    if ref is not None:
        lines.append(f"Reference: {ref.samples} texts from {ref.source}.")
    lines += ["", "| tokens | log | reference |", "| --- | --- | --- |"]
    for i, name in enumerate(names):
        lines.append(f"| {name} | {pct(seen[i])} | {'-' if expected is None else pct(expected[i])} |")
    return "\n".join(lines) + "\n"


def write(
    out: Path, window: LogWindow, ref: InputReference | None, checks: Sequence[Check], note: str | None, model: ModelDir
) -> Path:
    """report.md and its plots in `out`; the report's path."""
    margin = next((c.limit for c in checks if c.name == "label share"), 0.0)
    plot_label_share(out / "label_share.png", window, ref, margin)
    plot_confidence(out / "confidence.png", window)
    plot_input_length(out / "input_length.png", window, ref)
    path = out / "report.md"
    path.write_text(markdown(window, ref, checks, note, model))
    return path
