"""Loaders for each on-disk layout, each bad-input case, and the splits' stratification."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from trainer.data import DataError, load_raw, load_splits, stratified_split


def make_frame(n_per_class: int, offset: int = 0) -> pd.DataFrame:
    rows = []
    for i in range(n_per_class):
        rows.append(
            {"id": i, "rating": 9, "label": 1, "text": f"Great film number {i + offset}<br />Loved it &amp; more."}
        )
        rows.append({"id": i, "rating": 2, "label": 0, "text": f"Awful film number {i + offset}. Hated it."})
    return pd.DataFrame(rows)


def write_parquet_dir(root: Path, n_train: int = 50, n_test: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    make_frame(n_train).to_parquet(root / "train.parquet")
    make_frame(n_test, offset=1000).to_parquet(root / "test.parquet")
    return root


def write_acl_tree(root: Path, n: int = 6) -> Path:
    for split in ("train", "test"):
        for sub, rating, word in (("pos", 8, "wonderful"), ("neg", 3, "terrible")):
            folder = root / split / sub
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_{rating}.txt").write_text(f"A {word} movie, {split} {i}.<br /><br />The end.")
    return root


def to_kaggle(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"review": df["text"], "sentiment": df["label"].map({1: "positive", 0: "negative"})})


# ------------------------------------------------------------------------- formats


def test_parquet_layout_cleans_text_and_keeps_labels(tmp_path):
    splits = load_splits(write_parquet_dir(tmp_path), val_fraction=0.2)
    assert splits.source == "parquet"
    assert splits.sizes() == {"train": 80, "val": 20, "test": 40}
    assert list(splits.train.columns) == ["text", "label"]
    assert splits.train["label"].dtype == "int64"
    text = splits.train["text"].iloc[0]
    assert "<br" not in text and "&amp;" not in text
    assert any("Loved it & more." in t for t in splits.train["text"])


@pytest.mark.parametrize("nested", [True, False])
def test_acl_tree_layout(tmp_path, nested):
    write_acl_tree(tmp_path / "aclImdb" if nested else tmp_path)
    train, test, source = load_raw(tmp_path)
    assert source == "aclImdb"
    assert len(train) == 12 and len(test) == 12
    assert train["label"].sum() == 6
    assert train["text"].iloc[0] == "A terrible movie, train 0. The end."  # neg first, cleaned


def test_kaggle_csv_train_and_test_files(tmp_path):
    to_kaggle(make_frame(20)).to_csv(tmp_path / "train.csv", index=False)
    to_kaggle(make_frame(10)).to_csv(tmp_path / "test.csv", index=False)
    splits = load_splits(tmp_path)
    assert splits.source == "csv"
    assert splits.sizes() == {"train": 36, "val": 4, "test": 20}


def test_single_kaggle_csv_carves_a_stratified_test_split(tmp_path, caplog):
    path = tmp_path / "IMDB Dataset.csv"
    df = to_kaggle(make_frame(50))
    df["sentiment"] = df["sentiment"].str.upper()  # labels are matched case-insensitively
    df.to_csv(path, index=False)
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        splits = load_splits(path, val_fraction=0.1)
    assert splits.source == "csv (single file)"
    assert "carved a stratified test split of 50" in caplog.text
    assert splits.sizes() == {"train": 45, "val": 5, "test": 50}
    assert splits.test["label"].sum() == 25
    all_texts = pd.concat([splits.train, splits.val, splits.test])["text"]
    assert all_texts.is_unique and len(all_texts) == 100  # disjoint and complete
    # The directory holding only that CSV works the same way.
    assert load_splits(tmp_path).sizes() == splits.sizes()


# ------------------------------------------------------------------------- bad input


def expect_error(path, *fragments):
    with pytest.raises(DataError) as info:
        load_splits(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_data_dir(tmp_path):
    expect_error(tmp_path / "nope", "nope", "not found")


def test_empty_dir_has_no_dataset(tmp_path):
    expect_error(tmp_path, str(tmp_path), "no dataset found")


def test_missing_test_parquet(tmp_path):
    make_frame(5).to_parquet(tmp_path / "train.parquet")
    expect_error(tmp_path, "test.parquet", "file not found")


def test_missing_column(tmp_path):
    write_parquet_dir(tmp_path)
    make_frame(5).drop(columns="text").to_parquet(tmp_path / "train.parquet")
    expect_error(tmp_path, "train.parquet", "missing column", "'text'")


def test_unknown_label_values(tmp_path):
    write_parquet_dir(tmp_path)
    df = make_frame(5)
    df.loc[3, "label"] = 2
    df.to_parquet(tmp_path / "test.parquet")
    expect_error(tmp_path, "test.parquet", "unknown label values ['2']")


def test_unknown_csv_sentiment(tmp_path):
    df = to_kaggle(make_frame(5))
    df.loc[0, "sentiment"] = "meh"
    df.to_csv(tmp_path / "reviews.csv", index=False)
    expect_error(tmp_path, "reviews.csv", "unknown label values ['meh']")


@pytest.mark.parametrize("bad_text", ["", "   <br /><br /> ", None])
def test_empty_texts(tmp_path, bad_text):
    write_parquet_dir(tmp_path)
    df = make_frame(5)
    df["text"] = df["text"].astype(object)
    df.loc[4, "text"] = bad_text
    df.to_parquet(tmp_path / "train.parquet")
    expect_error(tmp_path, "train.parquet", "1 empty or missing text(s)", "row 4")


def test_empty_parquet_file(tmp_path):
    write_parquet_dir(tmp_path)
    make_frame(0).reindex(columns=["text", "label"]).to_parquet(tmp_path / "train.parquet")
    expect_error(tmp_path, "train.parquet", "no rows")


def test_zero_byte_files(tmp_path):
    (tmp_path / "reviews.csv").write_bytes(b"")
    expect_error(tmp_path, "reviews.csv", "file is empty")
    other = tmp_path / "pq"
    write_parquet_dir(other)
    (other / "test.parquet").write_bytes(b"")
    expect_error(other, "test.parquet", "not a readable parquet file")


def test_header_only_csv(tmp_path):
    (tmp_path / "reviews.csv").write_text("review,sentiment\n")
    expect_error(tmp_path, "reviews.csv", "no rows")


def test_acl_tree_with_empty_review_names_the_file(tmp_path):
    write_acl_tree(tmp_path / "aclImdb")
    (tmp_path / "aclImdb" / "test" / "pos" / "3_8.txt").write_text("<br />")
    expect_error(tmp_path, "3_8.txt", "empty review text")


def test_acl_tree_missing_neg_dir(tmp_path):
    write_acl_tree(tmp_path / "aclImdb")
    for f in (tmp_path / "aclImdb" / "test" / "neg").iterdir():
        f.unlink()
    (tmp_path / "aclImdb" / "test" / "neg").rmdir()
    expect_error(tmp_path, "neg", "directory not found")


# ------------------------------------------------------------------------- splitting


def test_validation_split_is_stratified_deterministic_and_disjoint(tmp_path):
    data = write_parquet_dir(tmp_path, n_train=100)
    a = load_splits(data, val_fraction=0.1, seed=7)
    b = load_splits(data, val_fraction=0.1, seed=7)
    c = load_splits(data, val_fraction=0.1, seed=8)
    pd.testing.assert_frame_equal(a.val, b.val)
    pd.testing.assert_frame_equal(a.train, b.train)
    assert not a.val["text"].equals(c.val["text"])
    assert a.val["label"].value_counts().to_dict() == {0: 10, 1: 10}
    assert set(a.val["text"]).isdisjoint(a.train["text"])
    # Shuffled: the files are sorted by label, the splits must not be.
    assert a.train["label"].iloc[:20].nunique() == 2


def test_caps_are_stratified_and_keep_the_same_validation_pool(tmp_path):
    data = write_parquet_dir(tmp_path, n_train=100, n_test=50)
    full = load_splits(data, seed=3)
    capped = load_splits(data, seed=3, max_train_samples=40, max_eval_samples=10)
    assert capped.sizes() == {"train": 40, "val": 10, "test": 10}
    for df in (capped.train, capped.val, capped.test):
        assert df["label"].sum() * 2 == len(df)
    assert set(capped.val["text"]) <= set(full.val["text"])
    assert set(capped.train["text"]) <= set(full.train["text"])


def test_stratified_split_keeps_proportions_and_exact_size():
    df = pd.DataFrame({"text": [str(i) for i in range(30)], "label": [0] * 20 + [1] * 10})
    taken, rest = stratified_split(df, 9, seed=0)
    assert len(taken) == 9 and len(rest) == 21
    assert taken["label"].value_counts().to_dict() == {0: 6, 1: 3}
    taken, _ = stratified_split(df, 1, seed=0)  # smaller than the number of classes still works
    assert len(taken) == 1


def test_bad_val_fraction(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        load_splits(write_parquet_dir(tmp_path), val_fraction=1.0)


@pytest.mark.parametrize("cap", ["max_train_samples", "max_eval_samples"])
def test_non_positive_cap_is_rejected_before_loading(tmp_path, cap):
    with pytest.raises(ValueError, match=f"{cap} must be positive"):
        load_splits(tmp_path / "not-even-there", **{cap: 0})
