"""The encoder says which texts truncation cut (the prediction log's `truncated`), windowed or whole."""

from __future__ import annotations

import random

import pytest
from tiny_model import packaged_model_dir
from tokenizers import Tokenizer

from core.modeldir import NO_LIMIT
from core.tokenization import EncodedTexts, TextEncoder, TruncationConfig

WORDS = "the film was a quiet triumph , yet its second half dragged ; i laughed and cried".split()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))


@pytest.mark.parametrize("truncation", [TruncationConfig(64, "head+tail", 16), TruncationConfig(64, "head")], ids=str)
def test_flags_say_whether_the_whole_text_was_longer_than_max_length(tokenizer, truncation):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in (2, 30, 61, 62, 63, 80, 400, 3000)]
    whole = TextEncoder(tokenizer, TruncationConfig(max_length=NO_LIMIT)).encode_batch(texts)
    expected = [len(ids) > truncation.max_length for ids in whole]
    assert True in expected and False in expected
    windowed = TextEncoder(tokenizer, truncation)
    assert sum(windowed._windows(t) is not None for t in texts) >= 1  # the windowed path is run too
    for encoder in (windowed, TextEncoder(tokenizer, truncation, char_cap=0)):
        out = encoder.encode_batch(texts)
        assert isinstance(out, EncodedTexts) and out.truncated == expected


def test_a_text_exactly_max_length_long_is_not_truncated(tokenizer):
    truncation = TruncationConfig(16, "head")
    encoder = TextEncoder(tokenizer, truncation)
    # "film" is one word piece: 14 of them plus [CLS] and [SEP] fill the window exactly.
    exact, over = encoder.encode_batch(["film " * 14, "film " * 15])
    assert len(exact) == len(over) == 16
    assert encoder.encode_batch(["film " * 14, "film " * 15]).truncated == [False, True]


def test_part_keeps_the_flags_of_its_texts():
    import numpy as np

    ids = [np.array([1, i, 2]) for i in range(5)]
    encoded = EncodedTexts(ids, [False, True, False, True, True])
    part = encoded.part(1, 4)
    assert [a.tolist() for a in part] == [a.tolist() for a in ids[1:4]]
    assert part.truncated == [True, False, True]
