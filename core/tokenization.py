"""Text cleaning, tokenization and truncation shared by training and serving.

One implementation for both sides: if the server cleaned or truncated reviews
differently from the trainer, the model would be served inputs it never saw.
It depends only on the Rust `tokenizers` library and numpy, so the server can
import it without torch or transformers.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

TRUNCATION_STRATEGIES = ("head", "head+tail")

_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """`<br />` and other HTML tags to whitespace, entities unescaped, spaces collapsed."""
    text = _BR.sub(" ", text)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class TruncationConfig:
    """How a review longer than `max_length` tokens (special tokens included) is cut.

    `head` keeps the beginning. `head+tail` keeps the first `head_tokens` and the
    last `max_length - 2 - head_tokens` word pieces: the end of a review often
    holds the verdict ("...but in the end, a waste of two hours").
    """

    max_length: int = 256
    strategy: str = "head"
    head_tokens: int = 128

    def __post_init__(self) -> None:
        if self.strategy not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {self.strategy!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if self.strategy == "head+tail" and not 0 < self.head_tokens < self.max_length - 2:
            raise ValueError(f"head_tokens must be in (0, max_length - 2), got {self.head_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TruncationConfig:
        return cls(
            max_length=int(data.get("max_length", cls.max_length)),
            strategy=str(data.get("strategy", data.get("truncation", cls.strategy))),
            head_tokens=int(data.get("head_tokens", cls.head_tokens)),
        )


@dataclass(frozen=True)
class SpecialIds:
    """The ids a model's batches are framed and padded with."""

    cls_id: int
    sep_id: int
    pad_id: int


class TextEncoder:
    """Cleans, tokenizes and truncates reviews to id arrays of varying length.

    Sequences are returned unpadded: the batcher groups them by length and pads
    each batch to its own longest member (see `pad_batch`).
    """

    def __init__(self, tokenizer: Tokenizer, truncation: TruncationConfig) -> None:
        self.truncation = truncation
        self._tok = Tokenizer.from_str(tokenizer.to_str())  # private copy: we change its settings
        self._tok.no_padding()
        self._tok.no_truncation()
        self.cls_id = self._special_id("[CLS]", "<s>")
        self.sep_id = self._special_id("[SEP]", "</s>")
        self.pad_id = self._special_id("[PAD]", "<pad>")

    @property
    def specials(self) -> SpecialIds:
        return SpecialIds(self.cls_id, self.sep_id, self.pad_id)

    @classmethod
    def from_file(cls, path: str | Path, truncation: TruncationConfig) -> TextEncoder:
        return cls(Tokenizer.from_file(str(path)), truncation)

    def _special_id(self, *names: str) -> int:
        for name in names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return int(token_id)
        raise ValueError(f"tokenizer has none of the special tokens {names}")

    def encode_batch(self, texts: Sequence[str], clean: bool = True) -> list[np.ndarray]:
        """Ids with [CLS]/[SEP], each at most `max_length` long (int64)."""
        if clean:
            texts = [clean_text(t) for t in texts]
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._frame(enc.ids) for enc in encodings]

    def _frame(self, body: list[int]) -> np.ndarray:
        budget = self.truncation.max_length - 2
        if len(body) > budget:
            if self.truncation.strategy == "head+tail":
                head = self.truncation.head_tokens
                body = body[:head] + body[len(body) - (budget - head) :]
            else:
                body = body[:budget]
        out = np.empty(len(body) + 2, dtype=np.int64)
        out[0] = self.cls_id
        out[1:-1] = body
        out[-1] = self.sep_id
        return out

    def save_serving_tokenizer(self, path: str | Path) -> None:
        """Write tokenizer.json with truncation to max_length recorded in it.

        The `head` strategy is fully described by the file; `head+tail` is applied by
        this class and recorded in the model directory's config.json (`serving`).
        """
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.enable_truncation(max_length=self.truncation.max_length)
        tok.save(str(path))


def pad_batch(
    seqs: Iterable[np.ndarray], pad_id: int, width_multiple: int = 1, rows: int = 0, max_width: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pad to the longest sequence of this batch (not max_length): review lengths vary
    tenfold, so padding every batch to max_length wastes most of the work.

    Shape buckets (for a GPU): the width is rounded up to a multiple of `width_multiple`, but
    not past `max_width` (when given and the longest fits in it), and a batch of fewer than
    `rows` sequences is filled up with copies of its first row (the caller drops their outputs).
    """
    seqs = list(seqs)
    longest = max(len(s) for s in seqs)
    width = -(-longest // width_multiple) * width_multiple
    if max_width and longest <= max_width:
        width = min(width, max_width)
    ids = np.full((max(rows, len(seqs)), width), pad_id, dtype=np.int64)
    mask = np.zeros((max(rows, len(seqs)), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    ids[len(seqs) :], mask[len(seqs) :] = ids[0], mask[0]
    return ids, mask
