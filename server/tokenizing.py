"""The tokenizer stage: texts -> ids on one thread, off the event loop.

Requests that arrive while the thread is busy are tokenized together in the next call, one
`encode` of all their texts: one thread hop and one wake-up of the loop per group instead of
per request (text-embeddings-inference's tokenizer workers take their queue the same way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.tokenization import EncodedTexts
from server.looppost import LoopPoster

log = logging.getLogger("server.tokenizing")

Encode = Callable[[Sequence[str]], list[np.ndarray]]


class TokenizerStage:
    """`await stage.encode(texts)`: the ids of one request's texts. `start()` before use."""

    def __init__(self, encode: Encode) -> None:
        self._encode = encode
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: list[tuple[Sequence[str], asyncio.Future[list[np.ndarray]]]] = []
        self._busy = False
        self._poster: LoopPoster | None = None

    def start(self) -> None:
        self._poster = LoopPoster(asyncio.get_running_loop())
        # One thread: the inference workers already take the cores (core/layout.py).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def encode(self, texts: Sequence[str]) -> asyncio.Future[list[np.ndarray]]:
        """A future of the ids of `texts`, in order; it fails with what encoding raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._waiting.append((texts, future))
        if not self._busy:
            self._next(loop)
        return future

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand every waiting request to the thread in one call (loop thread only)."""
        group = [(texts, f) for texts, f in self._waiting if not f.done()]  # a cancelled one is not run
        self._waiting = []
        if not group:
            self._busy = False
            return
        if self._pool is None or self._poster is None:
            raise RuntimeError("TokenizerStage used before start()")
        self._busy = True
        poster = self._poster

        def run() -> None:
            poster.post(self._deliver, loop, group, self._run([texts for texts, _ in group]))

        self._pool.submit(run)

    def _run(self, requests: list[Sequence[str]]) -> list[list[np.ndarray] | BaseException]:
        """On the thread: all texts in one call; if that fails, each request alone, so that one
        request's bad text fails that request only."""
        try:
            seqs = self._encode([text for texts in requests for text in texts])
        except Exception:
            out: list[list[np.ndarray] | BaseException] = []
            for texts in requests:
                try:
                    out.append(self._encode(texts))
                except Exception as exc:
                    out.append(exc)
            return out
        split: list[list[np.ndarray] | BaseException] = []
        start = 0
        for texts in requests:
            stop = start + len(texts)
            # The model encoder's answer carries truncation flags; a plain slice would drop them.
            split.append(seqs.part(start, stop) if isinstance(seqs, EncodedTexts) else seqs[start:stop])
            start = stop
        return split

    def _deliver(
        self,
        loop: asyncio.AbstractEventLoop,
        group: list[tuple[Sequence[str], asyncio.Future[list[np.ndarray]]]],
        results: list[list[np.ndarray] | BaseException],
    ) -> None:
        for (_, future), result in zip(group, results):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._next(loop)
