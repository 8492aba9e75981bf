"""IMDB review loading: three on-disk layouts to one cleaned (text, label) table.

Layouts, detected in this order inside `data_dir`:
  1. `train.parquet` + `test.parquet` (columns `text`, `label` 0/1; others ignored),
  2. an `aclImdb/` tree (or `data_dir` itself is one): `{train,test}/{pos,neg}/{id}_{rating}.txt`,
  3. a Kaggle-style CSV (`review`, `sentiment` = positive/negative): `train.csv` + `test.csv`,
     or one CSV file (`data_dir` may be the file itself), from which a stratified test split is carved.

Every problem with the input raises `DataError` with one line naming the file and the problem,
so a CLI can print it as is. Below the loaders: the splits tokenized for training (`Encoded`)
and each epoch's plan of micro-batches (`plan_batches`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.labels import LABEL2ID
from core.tokenization import TextEncoder, clean_text

log = logging.getLogger(__name__)

# A single CSV (the Kaggle "IMDB Dataset.csv" holds all 50k labelled reviews) gets half
# of it as test split: the same 25k/25k proportion as the official benchmark.
CSV_TEST_FRACTION = 0.5
_ACL_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")
# Reviews per length-sorted "mega-batch": large enough that batches pad little, small
# enough that batch order stays well shuffled.
MEGABATCH_BATCHES = 50


class DataError(Exception):
    """Unusable input data; the message is one line naming the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Splits:
    """Cleaned, shuffled splits with columns `text` (str) and `label` (int 0/1).

    `test` is for the final evaluation only; model selection uses `val`.
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    source: str  # which layout was read, e.g. "parquet", "aclImdb", "csv (single file)"

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


# ---------------------------------------------------------------------------- readers


def _validate(df: pd.DataFrame, path: Path, text_col: str, label_col: str) -> pd.DataFrame:
    """Checks columns, labels and texts; returns a fresh frame with cleaned `text`, int `label`."""
    if len(df) == 0:
        raise DataError(path, "file has no rows")
    missing = [c for c in (text_col, label_col) if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {list(df.columns)}")
    labels = df[label_col]
    if label_col == "sentiment":
        # the Kaggle CSV names the sentiments as core.labels does
        mapped = labels.astype(str).str.strip().str.lower().map(LABEL2ID)
        bad = labels[mapped.isna()]
        if len(bad):
            raise DataError(
                path,
                f"unknown label values {sorted(map(str, bad.unique()))[:5]} in column "
                f"'{label_col}' (expected positive/negative)",
            )
        labels = mapped
    else:
        numeric = pd.to_numeric(labels, errors="coerce")
        bad = labels[~numeric.isin([0, 1])]
        if len(bad):
            raise DataError(
                path,
                f"unknown label values {sorted(map(str, bad.unique()))[:5]} in column '{label_col}' (expected 0/1)",
            )
        labels = numeric
    texts = df[text_col]
    not_str = texts.map(lambda t: not isinstance(t, str))
    cleaned = texts.map(lambda t: clean_text(t) if isinstance(t, str) else "")
    empty = np.flatnonzero((cleaned == "").to_numpy() | not_str.to_numpy())
    if len(empty):
        raise DataError(
            path, f"{len(empty)} empty or missing text(s) in column '{text_col}' (first at row {int(empty[0])})"
        )
    return pd.DataFrame({"text": cleaned.to_numpy(), "label": labels.astype(np.int64).to_numpy()})


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt or empty file
        raise DataError(path, f"not a readable parquet file ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    return _validate(df, path, "text", "label")


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a readable CSV file ({exc})".splitlines()[0]) from None
    return _validate(df, path, "review", "sentiment")


def read_acl_split(split_dir: Path) -> pd.DataFrame:
    """One aclImdb split (`pos/` and `neg/` of `{id}_{rating}.txt`) as columns id, rating,
    label, text (raw text), sorted by label then id like the shared parquet files."""
    rows = []
    for label, sub in ((0, "neg"), (1, "pos")):
        folder = split_dir / sub
        if not folder.is_dir():
            raise DataError(folder, "directory not found (expected aclImdb/{train,test}/{pos,neg})")
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise DataError(folder, "no .txt review files")
        for f in files:
            m = _ACL_NAME.match(f.name)
            if not m:
                raise DataError(f, "file name is not {id}_{rating}.txt")
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise DataError(f, "not UTF-8 text") from None
            rows.append((int(m.group(1)), int(m.group(2)), label, text))
    df = pd.DataFrame(rows, columns=["id", "rating", "label", "text"])
    return df.sort_values(["label", "id"], kind="stable").reset_index(drop=True)


def _read_acl(split_dir: Path) -> pd.DataFrame:
    raw = read_acl_split(split_dir)
    empty = raw["text"].map(lambda t: clean_text(t) == "")
    if empty.any():
        row = raw[empty].iloc[0]
        sub = "pos" if row.label == 1 else "neg"
        raise DataError(split_dir / sub / f"{row.id}_{row.rating}.txt", "empty review text")
    return _validate(raw, split_dir, "text", "label")


def _acl_root(data_dir: Path) -> Path | None:
    for root in (data_dir / "aclImdb", data_dir):
        if (root / "train").is_dir() and ((root / "train" / "pos").is_dir() or (root / "train" / "neg").is_dir()):
            return root
    return None


def load_raw(data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """(train, test or None, source) from whichever layout `data_dir` holds; test is None
    only for a single CSV file."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(data_dir, "data directory not found")
    if data_dir.is_file():
        if data_dir.suffix.lower() != ".csv":
            raise DataError(data_dir, "expected a directory or a .csv file")
        return _read_csv(data_dir), None, "csv (single file)"
    if (data_dir / "train.parquet").exists() or (data_dir / "test.parquet").exists():
        return _read_parquet(data_dir / "train.parquet"), _read_parquet(data_dir / "test.parquet"), "parquet"
    root = _acl_root(data_dir)
    if root is not None:
        return _read_acl(root / "train"), _read_acl(root / "test"), "aclImdb"
    if (data_dir / "train.csv").exists():
        return _read_csv(data_dir / "train.csv"), _read_csv(data_dir / "test.csv"), "csv"
    csvs = sorted(data_dir.glob("*.csv"))
    if len(csvs) == 1:
        return _read_csv(csvs[0]), None, "csv (single file)"
    if len(csvs) > 1:
        raise DataError(
            data_dir, f"several CSV files {[c.name for c in csvs]}; expected train.csv/test.csv or one file"
        )
    raise DataError(data_dir, "no dataset found (expected train.parquet/test.parquet, an aclImdb/ tree, or a CSV file)")


# ---------------------------------------------------------------------------- splitting


def stratified_split(df: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(`n` rows with the label proportions of `df`, the rest), both shuffled, seeded.

    Per-class counts use largest remainders so the total is exactly `n`; written here rather
    than with sklearn's train_test_split because that refuses tiny classes and n < #classes.
    """
    n = max(0, min(int(n), len(df)))
    rng = np.random.default_rng(seed)
    counts = df["label"].value_counts().sort_index()
    exact = counts.to_numpy() * n / len(df) if len(df) else counts.to_numpy() * 0.0
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen, rest = [], []
    labels = df["label"].to_numpy()
    for label, k in zip(counts.index, take):
        idx = rng.permutation(np.flatnonzero(labels == label))
        chosen.append(idx[:k])
        rest.append(idx[k:])
    chosen_idx = rng.permutation(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    rest_idx = rng.permutation(np.concatenate(rest)) if rest else np.array([], dtype=int)
    return df.iloc[chosen_idx].reset_index(drop=True), df.iloc[rest_idx].reset_index(drop=True)


def _cap(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A stratified sample of at most `limit` rows, shuffled either way (files come sorted by label)."""
    if limit is None or limit >= len(df):
        return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return stratified_split(df, limit, seed)[0]


def load_splits(
    data_dir: str | Path,
    val_fraction: float = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> Splits:
    """Train/validation/test splits of the dataset in `data_dir`.

    The validation split is carved from the full train split before any cap, so the same
    seed gives the same validation reviews whatever `max_train_samples` is.
    `max_eval_samples` caps validation and test; every cap is a stratified, seeded sample.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    for name, cap in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if cap is not None and cap <= 0:
            raise ValueError(f"{name} must be positive, got {cap}")
    train, test, source = load_raw(data_dir)
    if test is None:
        test, train = stratified_split(train, round(len(train) * CSV_TEST_FRACTION), seed)
        log.info(
            "%s: single CSV has no test split; carved a stratified test split of %d reviews "
            "(%.0f%%, seed %d), %d left for train/validation",
            data_dir,
            len(test),
            CSV_TEST_FRACTION * 100,
            seed,
            len(train),
        )
    val, train = stratified_split(train, max(1, round(len(train) * val_fraction)), seed)
    # Distinct seeds per cap: the same seed on frames of equal size would pick the same positions.
    train = _cap(train, max_train_samples, seed + 1)
    val = _cap(val, max_eval_samples, seed + 2)
    test = _cap(test, max_eval_samples, seed + 3)
    for name, df in (("train", train), ("validation", val)):
        if len(df) == 0:
            raise DataError(data_dir, f"{name} split is empty after splitting")
    return Splits(train=train, val=val, test=test, source=source)


# ---------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Encoded:
    """A split as the model sees it: token ids (unpadded, specials included) and labels."""

    seqs: list[np.ndarray]
    labels: np.ndarray

    @classmethod
    def of(cls, df: pd.DataFrame, encoder: TextEncoder) -> Encoded:
        return cls(encoder.encode_batch(df["text"].tolist()), df["label"].to_numpy())

    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.seqs])


def encode_splits(splits: Splits, encoder: TextEncoder) -> tuple[Encoded, Encoded, Encoded]:
    """(train, validation, test), tokenized once up front; batches are padded per batch later."""
    t0 = time.perf_counter()
    train, val, test = (Encoded.of(df, encoder) for df in (splits.train, splits.val, splits.test))
    lengths, max_length = train.lengths(), encoder.truncation.max_length
    log.info(
        f"tokenized in {time.perf_counter() - t0:.1f}s; train tokens/review mean {lengths.mean():.0f}, "
        f"truncated to {max_length}: {100 * (lengths >= max_length).mean():.1f}%"
    )
    return train, val, test


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    world_size: int = 1,
    rank: int = 0,
) -> list[np.ndarray]:
    """This rank's micro-batches (index arrays) for one epoch, seeded by (seed, epoch).

    Every rank computes the same global batches of `batch_size * world_size` and takes a
    strided slice, so ranks need not talk. The index list is padded (by repeating) to a
    multiple of `world_size` so every rank gets the same number of equally sized batches.
    With `group_by_length`, reviews are sorted by length inside shuffled mega-batches,
    so each batch holds similar lengths and pads little; batch order is then shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    order = np.concatenate([order, order[: (-len(order)) % world_size]])
    global_batch = batch_size * world_size
    if group_by_length:
        by_index = np.asarray(lengths)
        mega = global_batch * MEGABATCH_BATCHES
        order = np.concatenate(
            [
                chunk[np.argsort(-by_index[chunk], kind="stable")]
                for chunk in (order[i : i + mega] for i in range(0, len(order), mega))
            ]
        )
    batches = [order[i : i + global_batch] for i in range(0, len(order), global_batch)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b[rank::world_size] for b in batches]


def accumulation_groups(batches: list[np.ndarray], accum: int) -> list[list[np.ndarray]]:
    """Micro-batches per optimizer step; the last group of an epoch may be shorter."""
    return [batches[i : i + accum] for i in range(0, len(batches), accum)]
