"""Fixtures of the exporter's tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, reviews) -> Path:
    """A labelled parquet dataset in the shared layout, 40 train rows -> 4 validation rows."""
    rows = [
        (t + suffix, label) for suffix in ("", " Really.", " Honestly.", " Truly.", " Indeed.") for t, label in reviews
    ]
    frame = pd.DataFrame(
        {
            "id": range(len(rows)),
            "rating": [8 if label else 2 for _, label in rows],
            "label": [label for _, label in rows],
            "text": [t for t, _ in rows],
        }
    )
    out = tmp_path_factory.mktemp("imdb")
    frame.to_parquet(out / "train.parquet")
    frame.to_parquet(out / "test.parquet")
    return out
