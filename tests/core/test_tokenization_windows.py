"""A long review tokenized in its kept windows gives the ids of tokenizing it whole."""

from __future__ import annotations

import json
import random

import pytest
from tiny_model import packaged_model_dir
from tokenizers import Tokenizer

from core.tokenization import TextEncoder, TruncationConfig

WORDS = (
    "the film was a quiet triumph , yet its second half dragged ; i laughed , cried and checked my watch . "
    "Spielberg's 1993 masterpiece (remastered) – naïve café scenes , un-bel-ie-vable stunts ! 10/10 <br /> "
    "&amp; a rollercoaster of über-ambitious , hyper-stylised nonsense"
).split()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))


def review(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@pytest.mark.parametrize(
    "truncation",
    [TruncationConfig(64, "head+tail", 16), TruncationConfig(64, "head"), TruncationConfig(32, "head+tail", 8)],
    ids=str,
)
def test_windowed_ids_equal_whole_text_ids(tokenizer, truncation):
    rng = random.Random(0)
    texts = [review(rng, n) for n in (3, 40, 200, 900, 2500)] + [review(rng, 700) for _ in range(20)]
    windowed, whole = TextEncoder(tokenizer, truncation), TextEncoder(tokenizer, truncation, char_cap=0)
    assert windowed.char_cap > 0
    assert sum(windowed._windows(t) is not None for t in texts) >= 20  # the test runs the windowed path
    for a, b in zip(windowed.encode_batch(texts), whole.encode_batch(texts)):
        assert a.tolist() == b.tolist()


def test_windows_with_too_few_word_pieces_fall_back_to_the_whole_text(tokenizer):
    truncation = TruncationConfig(32, "head+tail", 8)
    # Words of over 100 letters are one [UNK] each (WordPiece's longest word), so a window of
    # 8 characters per kept piece holds too few pieces and the whole text is tokenized.
    rng = random.Random(1)
    text = " ".join("a " + "".join(rng.choice("abcdefghij") for _ in range(120)) for _ in range(80))
    encoder = TextEncoder(tokenizer, truncation)
    window = encoder._windows(text)
    assert window is not None
    assert encoder._windowed_body(encoder._tok.encode(window[0], add_special_tokens=False), window[1]) is None
    assert (
        encoder.encode_batch([text])[0].tolist()
        == TextEncoder(tokenizer, truncation, 0).encode_batch([text])[0].tolist()
    )


def test_windows_are_off_for_a_pre_tokenizer_that_does_not_split_words(tokenizer):
    spec = json.loads(tokenizer.to_str())
    spec["pre_tokenizer"] = None
    encoder = TextEncoder(Tokenizer.from_str(json.dumps(spec)), TruncationConfig(64, "head+tail", 16))
    assert encoder.char_cap == 0
    assert encoder._windows("word " * 5000) is None
