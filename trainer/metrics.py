"""Classification metrics and plots shared by the transformer trainer and the baseline.

Both write the same `metrics.json` layout from (labels, probabilities), so a
baseline number and a fine-tuned number are computed by the same code.
Only numpy and matplotlib: no torch, so the baseline stays light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.labels import LABELS

Labels = Sequence[int] | np.ndarray  # class ids, 0 = negative, 1 = positive


def _positive_probs(probs: np.ndarray) -> np.ndarray:
    """Accept P(positive) as shape [n] or class probabilities as [n, 2]."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2:
        if probs.shape[1] != 2:
            raise ValueError(f"expected probabilities of shape [n, 2], got {probs.shape}")
        return probs[:, 1]
    if probs.ndim != 1:
        raise ValueError(f"expected probabilities of shape [n] or [n, 2], got {probs.shape}")
    return probs


def classification_metrics(labels: Labels, probs: np.ndarray, loss: float | None = None) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix, count, loss.

    `probs` is P(positive) per sample ([n]) or class probabilities ([n, 2]); the
    prediction is positive when P(positive) >= 0.5. `confusion_matrix[i][j]` counts
    samples of true class i predicted as class j.
    """
    y = np.asarray(labels, dtype=np.int64)
    p_pos = _positive_probs(probs)
    if len(y) != len(p_pos):
        raise ValueError(f"{len(y)} labels but {len(p_pos)} probabilities")
    if len(y) == 0:
        raise ValueError("cannot compute metrics on zero samples")
    pred = (p_pos >= 0.5).astype(np.int64)
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)

    per_class = {}
    for k, name in enumerate(LABELS):
        tp = int(cm[k, k])
        predicted = int(cm[:, k].sum())
        actual = int(cm[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}

    out = {
        "accuracy": float((pred == y).mean()),
        "precision_macro": float(np.mean([c["precision"] for c in per_class.values()])),
        "recall_macro": float(np.mean([c["recall"] for c in per_class.values()])),
        "f1_macro": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "samples": len(y),
        "loss": None if loss is None or not math.isfinite(loss) else float(loss),
    }
    return out


def save_plots(
    out_dir: str | Path,
    history: list[dict[str, Any]] | None,
    labels: Labels,
    probs: np.ndarray,
    prefix: str = "",
) -> list[Path]:
    """Write PNGs: loss/accuracy curves (when `history` has entries), confusion matrix,
    histogram of prediction confidence. Returns the written paths.

    `history` items are per-epoch dicts; keys used when present: `epoch`, `train_loss`,
    `val_loss`, `val_accuracy`.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on the training machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(labels, dtype=np.int64)
    p_pos = _positive_probs(probs)
    written: list[Path] = []

    if history:
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            points = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
            if points:
                ax_loss.plot(*zip(*points), marker="o", label=label)
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.set_title("Loss")
        ax_loss.legend()
        points = [(e, h["val_accuracy"]) for e, h in zip(epochs, history) if h.get("val_accuracy") is not None]
        if points:
            ax_acc.plot(*zip(*points), marker="o", color="tab:green", label="validation")
            ax_acc.legend()
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("accuracy")
        ax_acc.set_title("Validation accuracy")
        fig.tight_layout()
        path = out / f"{prefix}curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    cm = classification_metrics(y, p_pos)["confusion_matrix"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks([0, 1], LABELS)
    ax.set_yticks([0, 1], LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    top = max(max(row) for row in cm) or 1
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color="white" if cm[i][j] > top / 2 else "black")
    fig.tight_layout()
    path = out / f"{prefix}confusion_matrix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    # Confidence = probability of the predicted class, split by correctness: a good
    # model is confident when right and unsure when wrong.
    confidence = np.maximum(p_pos, 1 - p_pos)
    correct = (p_pos >= 0.5).astype(np.int64) == y
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0.5, 1.0, 26).tolist()
    ax.hist(
        [confidence[correct], confidence[~correct]],
        bins=bins,
        stacked=True,
        label=["correct", "wrong"],
        color=["tab:blue", "tab:red"],
    )
    ax.set_xlabel("confidence (probability of predicted class)")
    ax.set_ylabel("reviews")
    ax.set_title("Prediction confidence")
    ax.legend()
    fig.tight_layout()
    path = out / f"{prefix}confidence_histogram.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
