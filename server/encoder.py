"""Texts -> token ids for the served model: the first of the two jobs behind a prediction
(the runner, server/runner.py, does ids -> probabilities). The inference layer owns both.

The cleaning and truncation are the trainer's own (core.tokenization): a model served inputs
prepared differently from its training data would see texts it never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from core.modeldir import ModelDir
from core.tokenization import SpecialIds


class Encoder(Protocol):
    """What the inference layer needs to turn texts into ids; the HTTP tests use a fake one."""

    max_length: int

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]: ...


class ModelEncoder:
    """One model directory's tokenizer. With `truncate=False` texts are encoded whole, and the
    inference layer refuses those over `max_length` instead of cutting them."""

    def __init__(self, model: ModelDir, truncate: bool = True) -> None:
        self._encoder = model.encoder(truncate)
        self.max_length = model.truncation.max_length

    @property
    def specials(self) -> SpecialIds:
        return self._encoder.specials

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encoder.encode_batch(texts)
