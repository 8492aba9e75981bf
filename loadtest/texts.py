"""Reviews to send under load: real IMDB test reviews when present, else look-alikes.

Latency depends on token count, so a load test is only as honest as its text lengths.
Real reviews come from `<data_dir>/test.parquet` (shuffled with a fixed seed: the file is
sorted by label). Without the data, texts are generated with the same length
distribution: word counts log-normal with median ~170 and mean ~230 words, clipped to
[10, 2500] (measured on the IMDB test split: median 172, mean 229, p95 582, max 2278),
built from movie-review vocabulary with `<br /><br />` paragraph breaks.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

DEFAULT_DATA_DIR = "data/imdb"
MEDIAN_WORDS = 172
SIGMA = 0.74  # log-space spread fitted to the IMDB test split's p50/p95
MIN_WORDS, MAX_WORDS = 10, 2500

_OPENERS = [
    "I watched this movie last night",
    "This film",
    "The plot",
    "The acting",
    "Honestly the director",
    "My wife and I saw this",
    "The first half",
    "The ending",
    "The cast",
    "The soundtrack",
]
_WORDS = (
    "the a an and but or so because while although movie film story plot scene scenes actor actress "
    "cast director script dialogue camera music score ending character characters performance "
    "performances was is were are had has felt seemed looked sounded made makes really very quite "
    "rather too not never always just still even also again later first second last whole every "
    "great good wonderful brilliant beautiful moving funny clever charming superb excellent "
    "bad terrible awful boring dull predictable lazy weak poor painful worst best "
    "time minutes hours year years people audience theater DVD budget effects action drama comedy "
    "horror romance thriller war family love life death friend friends night world way thing things "
    "with without from into about over after before during through of to in on at for by as"
).split()


def generate_texts(n: int, seed: int = 0) -> list[str]:
    """`n` synthetic reviews whose word counts follow the IMDB test split's distribution."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = round(MEDIAN_WORDS * math.exp(rng.gauss(0.0, SIGMA)))
        texts.append(_review(rng, min(MAX_WORDS, max(MIN_WORDS, words))))
    return texts


def _review(rng: random.Random, n_words: int) -> str:
    sentences, written = [], 0
    while written < n_words:
        length = min(n_words - written, rng.randint(6, 22))
        opener = rng.choice(_OPENERS).split()[:length]
        body = opener + [rng.choice(_WORDS) for _ in range(length - len(opener))]
        sentence = " ".join(body)
        sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".....!?"))
        written += length
        if rng.random() < 0.08:
            sentences.append("<br /><br />")
    return " ".join(sentences)


def load_texts(n: int, data_dir: str | Path | None = DEFAULT_DATA_DIR, seed: int = 0) -> tuple[list[str], str]:
    """`n` reviews and where they came from ("imdb:<path>" or "synthetic").

    Falls back to generated texts when the parquet file or a parquet reader is missing,
    so the load test runs anywhere (the serving image has neither).
    """
    if n <= 0:
        raise ValueError(f"number of texts must be > 0, got {n}")
    path = Path(data_dir) / "test.parquet" if data_dir else None
    if path is not None and path.is_file():
        try:
            import pyarrow.parquet as pq
        except ImportError:
            pq = None
        if pq is not None:
            column = pq.read_table(path, columns=["text"]).column("text").to_pylist()
            rng = random.Random(seed)
            rng.shuffle(column)
            # Repeat when asked for more reviews than the file has (e.g. a tiny test file).
            texts = [column[i % len(column)] for i in range(n)] if column else []
            if texts:
                return texts, f"imdb:{path}"
    return generate_texts(n, seed), "synthetic"


def word_counts(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]
