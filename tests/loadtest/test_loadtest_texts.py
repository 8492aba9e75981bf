"""Review source: real IMDB reviews when the parquet file exists, else look-alikes."""

from __future__ import annotations

import statistics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadtest.texts import MAX_WORDS, MIN_WORDS, generate_texts, load_texts, word_counts


def test_synthetic_lengths_follow_imdb():
    counts = word_counts(generate_texts(3000, seed=1))
    assert 140 <= statistics.median(counts) <= 210
    assert 190 <= statistics.mean(counts) <= 270
    assert min(counts) >= MIN_WORDS - 2 and max(counts) <= MAX_WORDS + 400  # "<br />" splits into pieces
    assert sum(c > 900 for c in counts) >= 10, "long tail missing"


def test_synthetic_is_deterministic_per_seed():
    assert generate_texts(5, seed=3) == generate_texts(5, seed=3) != generate_texts(5, seed=4)


def test_reads_parquet_shuffled_and_repeats(tmp_path):
    texts = [f"review number {i}" for i in range(10)]
    pq.write_table(pa.table({"text": texts, "label": [i % 2 for i in range(10)]}), tmp_path / "test.parquet")
    got, source = load_texts(25, tmp_path, seed=0)
    assert source == f"imdb:{tmp_path / 'test.parquet'}" and len(got) == 25
    assert set(got) == set(texts) and got[:10] != texts


def test_falls_back_to_synthetic(tmp_path):
    got, source = load_texts(4, tmp_path / "missing")
    assert source == "synthetic" and len(got) == 4
    with pytest.raises(ValueError):
        load_texts(0)
