"""The TF-IDF baseline on a tiny generated dataset: it learns, and writes the shared layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from trainer.__main__ import main as trainer_main


def main(argv: list[str]) -> int:
    """`python -m trainer baseline ARGV`."""
    return trainer_main(["baseline", *argv])


POSITIVE = ["wonderful", "brilliant", "moving", "superb", "delightful", "masterpiece"]
NEGATIVE = ["awful", "boring", "dreadful", "tedious", "waste", "terrible"]
NEUTRAL = ["plot", "actor", "scene", "director", "camera", "story", "ending", "cast", "music", "script"]


def synthetic_reviews(n: int, seed: int) -> pd.DataFrame:
    """Reviews whose label is carried by a few sentiment words among neutral ones."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        cue = POSITIVE if label else NEGATIVE
        words = rng.choices(NEUTRAL, k=8) + rng.choices(cue, k=2)
        rng.shuffle(words)
        rows.append({"text": "The " + " ".join(words) + ".<br />", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_imdb")
    synthetic_reviews(200, seed=1).to_parquet(root / "train.parquet")
    synthetic_reviews(100, seed=2).to_parquet(root / "test.parquet")
    return root


def test_baseline_learns_and_writes_metrics_and_plots(tiny_data, tmp_path, capsys):
    out = tmp_path / "baseline"
    assert main(["--data-dir", str(tiny_data), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["samples"] == 100
    assert test["accuracy"] >= 0.95  # the cue words separate the classes
    assert set(test) >= {
        "accuracy",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "per_class",
        "confusion_matrix",
        "loss",
    }
    assert sum(map(sum, test["confusion_matrix"])) == 100
    assert metrics["validation"]["samples"] == 20 and metrics["train_samples"] == 180
    assert metrics["top_features"]["positive"][0] in POSITIVE
    assert metrics["top_features"]["negative"][0] in NEGATIVE
    for png in ("confusion_matrix.png", "confidence_histogram.png"):
        assert (out / png).stat().st_size > 1000
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == round(test["accuracy"], 4)


def test_baseline_caps_samples(tiny_data, tmp_path):
    out = tmp_path / "capped"
    argv = [
        "--data-dir",
        str(tiny_data),
        "--output-dir",
        str(out),
        "--max-train-samples",
        "60",
        "--max-eval-samples",
        "30",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["train_samples"], metrics["validation"]["samples"], metrics["test"]["samples"]) == (60, 20, 30)


def test_bad_data_dir_is_one_line_exit_2(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: data directory not found" in err
    assert not (tmp_path / "o").exists()


def test_empty_vocabulary_is_one_line_exit_2(tiny_data, tmp_path, capsys):
    assert main(["--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "o"), "--min-df", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:")
