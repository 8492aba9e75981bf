"""The data report on a tiny dataset with known lengths and words."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core.tokenization import TextEncoder, TruncationConfig
from trainer.__main__ import main as trainer_main
from trainer.eda import default_tokenizer


def main(argv: list[str]) -> int:
    """`python -m trainer eda ARGV`."""
    return trainer_main(["eda", *argv])


def frame(n_per_class: int, offset: int = 0) -> pd.DataFrame:
    rows = []
    for i in range(n_per_class):
        # Lengths 10, 20, ..., so the percentiles and truncation shares are predictable.
        n = 10 * (i + 1)
        rows.append({"text": " ".join(["wonderful"] * n) + f" {i + offset}", "label": 1})
        rows.append({"text": " ".join(["awful"] * n) + f" {i + offset}", "label": 0})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    data = tmp_path_factory.mktemp("eda_data")
    train = frame(20)
    train = pd.concat([train, train.iloc[:2]], ignore_index=True)  # two duplicates
    train.to_parquet(data / "train.parquet")
    test = pd.concat([frame(20).iloc[:30], frame(5, offset=100)], ignore_index=True)  # 30 texts shared with train
    test.to_parquet(data / "test.parquet")
    out = tmp_path_factory.mktemp("eda") / "report"
    assert main(["--data-dir", str(data), "--output-dir", str(out), "--top-k", "5"]) == 0
    return data, out


def test_report_numbers(report):
    data, out = report
    stats = json.loads((out / "stats.json").read_text())
    assert stats["splits"]["train"] == {"reviews": 42, "negative": 21, "positive": 21, "duplicate_texts": 2}
    assert stats["splits"]["test"]["reviews"] == 40
    assert stats["texts_in_train_and_test"] == 30
    texts = pd.concat([pd.read_parquet(data / "train.parquet"), pd.read_parquet(data / "test.parquet")])["text"]
    words = texts.str.split().str.len()
    assert stats["word_counts"]["p50"] == pytest.approx(words.quantile(0.5))
    assert stats["word_counts"]["p99"] == pytest.approx(words.quantile(0.99))
    # Token lengths from the same encoder the trainer uses, specials included.
    encoder = TextEncoder.from_file(default_tokenizer(), TruncationConfig(max_length=100_000))
    lengths = pd.Series([len(ids) for ids in encoder.encode_batch(texts.tolist())])
    for n in ("128", "256", "512"):
        assert stats["truncated_share"][n] == pytest.approx((lengths > int(n)).mean())
    assert 0 < stats["truncated_share"]["128"] < 1 and stats["truncated_share"]["512"] == 0
    assert stats["top_words"]["positive"][0][0] == "wonderful"
    assert stats["top_words"]["negative"][0][0] == "awful"
    assert stats["distinctive_words"]["negative"][0][0] == "awful"


def test_report_markdown_and_figures(report):
    _, out = report
    md = (out / "report.md").read_text()
    for heading in ("## Class balance", "## Length", "## Words per class", "| truncated |"):
        assert heading in md
    for png in ("class_balance.png", "word_counts.png", "token_lengths.png", "top_words.png"):
        assert f"]({png})" in md
        assert (out / png).stat().st_size > 1000


def test_bad_tokenizer_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "train.parquet").touch()
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    assert main(["--data-dir", str(tmp_path), "--tokenizer", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: tokenizer file not found" in capsys.readouterr().err
    frame(3).to_parquet(tmp_path / "train.parquet")
    frame(3).to_parquet(tmp_path / "test.parquet")
    assert main(["--data-dir", str(tmp_path), "--tokenizer", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a usable tokenizer.json" in err


def test_bad_data_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "reviews.csv").write_text("text,label\nhello,1\n")
    assert main(["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reviews.csv: missing column" in err
