"""The export gate: PyTorch vs ONNX on held-out reviews (engines run by exporter/compare.py).

Both models receive the same ids: TextEncoder (clean, tokenize, truncate as in
training) then pad_batch, exactly what the server does. Any difference in
labels is therefore the graph's, not the tokenizer's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.probs import softmax
from core.tokenization import TextEncoder
from exporter.compare import batched_probs, onnx_logits, torch_probs

DEFAULT_DATA_DIR = Path("data/imdb")
BATCH = 16


class EvalDataError(Exception):
    """--eval-data is missing or unreadable; the message names it."""


@dataclass(frozen=True)
class EvalSet:
    texts: list[str]
    labels: list[int] | None  # None for random text: agreement only, no accuracy
    source: str
    # Label id -> reviews in the training data (the reference for the positive-share drift
    # alert), and where they were counted; None for random text.
    label_counts: dict[int, int] | None = None
    label_source: str | None = None
    # Labelled test reviews the calibration is measured on after its fit (never the gate's or the
    # fit's reviews), and where they came from; None when not asked for or not available.
    held_out_texts: list[str] | None = None
    held_out_labels: list[int] | None = None
    held_out_source: str | None = None
    # Training reviews a static int8 graph's activation ranges are calibrated on (never the gate's
    # reviews); None when not asked for or where the data has no train split apart from them.
    train_texts: list[str] | None = None
    train_source: str | None = None


def load_eval_set(
    data_dir: Path | None,
    n: int,
    seed: int,
    vocab: list[str],
    training_config: dict | None = None,
    held_out: int = 0,
    train: int = 0,
) -> EvalSet:
    """`n` labelled held-out reviews, or random text when no data is available.

    `training_config` (the checkpoint's) supplies the seed and validation fraction, so
    the reviews come from the validation split the trainer held out. `held_out`: as many
    test-split reviews too (where the data has a test split apart from the eval reviews).
    `train`: as many training reviews too (`train_texts`), for a static quantizer's calibration.
    """
    explicit = data_dir is not None
    directory = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if directory.is_dir():
        return _load_reviews(directory, n, seed, training_config or {}, held_out, train)
    if explicit:
        raise EvalDataError(f"--eval-data {directory} is not a directory")
    return _random_text(n, seed, vocab)


def _load_reviews(
    data_dir: Path, n: int, seed: int, training_config: dict, held_out: int = 0, train: int = 0
) -> EvalSet:
    import pandas as pd

    load_splits: Callable[..., Any] | None
    try:
        from trainer.data import load_splits
    except ImportError:  # exporter installed without the trainer: read parquet directly
        load_splits = None
    try:
        if load_splits is not None:  # the trainer's validation split: the gate never sees test
            kwargs = {k: training_config[k] for k in ("val_fraction", "seed") if k in training_config}
            splits = load_splits(data_dir, **kwargs)
            frame, counted, test = splits.val, splits.train, splits.test
            source = f"{data_dir} validation split (trainer.data.load_splits {kwargs or 'defaults'})"
            label_source = f"{data_dir} train split ({len(counted)} reviews)"
            test_source = f"{data_dir} test split"
            training, training_source = counted, f"{data_dir} train split (trainer.data.load_splits)"
        else:
            name = next((f for f in ("validation.parquet", "test.parquet") if (data_dir / f).is_file()), None)
            if name is None:
                raise EvalDataError(f"{data_dir} has no validation.parquet or test.parquet")
            frame, source = pd.read_parquet(data_dir / name, columns=["text", "label"]), str(data_dir / name)
            counted, label_source = frame, f"{source} ({len(frame)} reviews; the trainer was not installed)"
            # the test split is held out only where the eval reviews came from elsewhere
            test_path = data_dir / "test.parquet"
            has_test = name != "test.parquet" and held_out > 0 and test_path.is_file()
            test = pd.read_parquet(test_path, columns=["text", "label"]) if has_test else None
            test_source = str(test_path)
            train_path = data_dir / "train.parquet"  # never the eval reviews: those are validation or test
            training = pd.read_parquet(train_path, columns=["text"]) if train > 0 and train_path.is_file() else None
            training_source = str(train_path)
    except EvalDataError:
        raise
    except Exception as exc:
        raise EvalDataError(f"cannot read eval data {data_dir}: {exc}") from None
    counts = {int(k): int(v) for k, v in counted["label"].value_counts().items()}
    # files are sorted by label: sample, never take the head
    frame = frame.sample(n=min(n, len(frame)), random_state=seed)
    texts, labels = frame["text"].astype(str).tolist(), frame["label"].astype(int).tolist()
    calibration: dict[str, Any] = {}
    if train > 0 and training is not None and len(training) > 0:
        training = training.sample(n=min(train, len(training)), random_state=seed)
        calibration = {
            "train_texts": training["text"].astype(str).tolist(),
            "train_source": f"{training_source} ({len(training)} reviews sampled, seed {seed})",
        }
    if held_out <= 0 or test is None or len(test) == 0:
        return EvalSet(texts, labels, source, counts, label_source, **calibration)
    test = test.sample(n=min(held_out, len(test)), random_state=seed)
    return EvalSet(
        texts,
        labels,
        source,
        counts,
        label_source,
        held_out_texts=test["text"].astype(str).tolist(),
        held_out_labels=test["label"].astype(int).tolist(),
        held_out_source=f"{test_source} ({len(test)} reviews sampled, seed {seed})",
        **calibration,
    )


def _random_text(n: int, seed: int, vocab: list[str]) -> EvalSet:
    rng = random.Random(seed)
    words = [w for w in vocab if w.isalpha() and len(w) > 2] or ["film"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 300))) for _ in range(n)]
    return EvalSet(texts, None, "random text (no --eval-data and no data/imdb)")


def score_eval_set(model, session, encoder: TextEncoder, eval_set: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's probabilities and the ONNX graph's logits (what calibration is fitted on) for
    the eval reviews, on the same batches."""
    out = batched_probs(
        {
            "pytorch": lambda ids, mask: torch_probs(model, ids, mask),
            "onnx": lambda ids, mask: onnx_logits(session, ids, mask),
        },
        encoder,
        eval_set.texts,
        BATCH,
    )
    return out["pytorch"], out["onnx"]


def parity_report(pt_probs: np.ndarray, ox_logits: np.ndarray, eval_set: EvalSet) -> dict:
    """Label agreement, accuracy of each side, max |prob diff| over all classes (uncalibrated:
    both sides' plain softmax)."""
    pt, ox = pt_probs, softmax(ox_logits)
    pt_label, ox_label = pt.argmax(1), ox.argmax(1)
    report = {
        "samples": len(eval_set.texts),
        "source": eval_set.source,
        "label_agreement": float((pt_label == ox_label).mean()),
        "max_abs_prob_diff": float(np.abs(pt - ox).max()),
        "mean_abs_prob_diff": float(np.abs(pt - ox).mean()),
        "pytorch_accuracy": None,
        "onnx_accuracy": None,
        "accuracy_drop_points": None,
    }
    if eval_set.labels is not None:
        labels = np.asarray(eval_set.labels)
        pytorch_accuracy = float((pt_label == labels).mean())
        onnx_accuracy = float((ox_label == labels).mean())
        report["pytorch_accuracy"] = pytorch_accuracy
        report["onnx_accuracy"] = onnx_accuracy
        report["accuracy_drop_points"] = 100.0 * (pytorch_accuracy - onnx_accuracy)
    return report


def gate_failures(parity: dict, max_accuracy_drop: float, min_agreement: float) -> list[str]:
    """Reasons this export must not ship; empty when it passes."""
    reasons = []
    # Both sides are ratios of review counts: 0.8900 - 0.8850 is 0.50000000000000044 points in floats,
    # so a drop of exactly the limit (5 reviews of 1,000 at 0.5) would fail without the slack.
    eps = 1e-9
    if parity["label_agreement"] < min_agreement - eps:
        reasons.append(f"label agreement {parity['label_agreement']:.4f} < --min-agreement {min_agreement}")
    drop = parity["accuracy_drop_points"]
    if drop is not None and drop > max_accuracy_drop + eps:
        reasons.append(
            f"accuracy drop {drop:.2f} points (PyTorch {parity['pytorch_accuracy']:.4f}, "
            f"ONNX {parity['onnx_accuracy']:.4f}) > --max-accuracy-drop {max_accuracy_drop}"
        )
    return reasons
