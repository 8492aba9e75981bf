"""What the query and load steps send and read: sample reviews, JSON over HTTP (stdlib only),
and the server's batching figures from its /metrics page."""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SAMPLE_REVIEWS = [  # used when the dataset is not available (e.g. a model dir brought from elsewhere)
    ("A charming, funny film with a wonderful cast. I would happily watch it again.", 1),
    ("Dreadful. I walked out after forty minutes; the plot made no sense at all.", 0),
    ("Great direction, great music, great performances. Highly recommended!", 1),
    ("Terrible editing, wooden dialogue and a painfully slow second half.", 0),
]


def http_json(url: str, payload: dict[str, Any] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


_SAMPLE = re.compile(r"^(sentiment_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def metric_totals(text: str) -> dict[str, float]:
    """Sum of each series name over its labels (e.g. sentiment_batch_size_sum -> total texts)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(3) != "NaN":
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def server_summary(text: str) -> dict[str, float]:
    t = metric_totals(text)
    batches = t.get("sentiment_batch_size_count", 0.0)
    out = {"batches": batches}
    if batches:
        out["mean_batch_size"] = t["sentiment_batch_size_sum"] / batches
        out["texts"] = t["sentiment_batch_size_sum"]
    if t.get("sentiment_padding_ratio_count"):
        out["mean_padding_ratio"] = t["sentiment_padding_ratio_sum"] / t["sentiment_padding_ratio_count"]
    return out


def pick_reviews(data_dir: Path, n: int = 4, seed: int = 7) -> list[tuple[str, int]]:
    """n test reviews, half of each label, of readable length; the built-in samples without data.

    Where the data has IMDB's star ratings, only clear-cut ones (1-2 or 9-10 stars): a demo of a
    briefly trained model should show what it does, not its coin flips on 4-star reviews.
    """
    path = data_dir / "test.parquet"
    if not path.is_file():
        return SAMPLE_REVIEWS[:n]
    import pandas as pd  # demo-only dependency: the server never imports this module

    df = pd.read_parquet(path)
    df = df[df["text"].str.len().between(200, 900)]
    if "rating" in df.columns:
        df = df[(df["rating"] <= 2) | (df["rating"] >= 9)]
    rows = []
    for label in (1, 0):
        part = df[df["label"] == label]
        rows += part.sample(n=min(len(part), (n + 1) // 2), random_state=seed).itertuples(index=False)
    random.Random(seed).shuffle(rows)
    return [(str(r.text), int(r.label)) for r in rows[:n]]
