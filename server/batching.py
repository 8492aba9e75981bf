"""The batching policy: when a free worker takes the next batch, and which texts go in it.

Pure functions of measured quantities (queue length, the oldest text's wait, token counts), as
BentoML's dispatcher keeps its decision apart from the loop that acts on it: tested with
numbers, no event loop or threads. The micro-batcher (server/batcher.py) acts on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_s: float = 0.005
    # Most padding a batch of several texts may carry (share of its padded tokens). On a CPU
    # a padded token costs what a real one does, so a long and a short text are cheaper in
    # two batches (run side by side by two workers) than padded into one. 1.0: no limit.
    max_padding: float = 1.0


def dispatch_delay(n_pending: int, longest: int, oldest_wait_s: float, limits: BatchLimits) -> float | None:
    """Seconds a free worker should wait before taking the next batch: 0 = now, None =
    nothing pending (wait for a text).

    Only a free worker asks, so while every worker is busy the batch keeps growing for free.
    A batch is full when no further text could join it: any newcomer pads to at least
    `longest`, so once one more text of that width would pass the token budget, waiting only
    idles a worker (on CPU, with a budget of 256, that is every text over 128 tokens).
    """
    if n_pending == 0:
        return None
    full = n_pending >= limits.max_batch_size or (n_pending + 1) * longest > limits.max_batch_tokens
    if full:
        return 0.0
    return max(0.0, limits.max_wait_s - oldest_wait_s)


def select_batch(lengths: Sequence[int], limits: BatchLimits) -> list[int]:
    """Indices (into `lengths`, oldest first) of the next batch.

    The oldest text is always in it, so nothing starves. When everything pending fits,
    everything goes. Otherwise the batch is a run of similar lengths around the oldest
    text: as many texts as fit, then least padding (batches are padded to their longest).
    "Fits": at most max_batch_size texts, max_batch_tokens padded tokens and a share of
    padding of at most max_padding (a text alone always fits).
    """
    n = len(lengths)
    if n == 0:
        return []

    def fits(k: int, width: int, total: int) -> bool:
        return k == 1 or (width * k <= limits.max_batch_tokens and total >= (1.0 - limits.max_padding) * width * k)

    if n <= limits.max_batch_size and fits(n, max(lengths), sum(lengths)):
        return list(range(n))
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    sorted_lengths = [lengths[i] for i in order]
    prefix = [0]
    for value in sorted_lengths:
        prefix.append(prefix[-1] + value)
    p = order.index(0)
    for k in range(min(limits.max_batch_size, n), 0, -1):
        best: tuple[int, int] | None = None
        for start in range(max(0, p - k + 1), min(p, n - k) + 1):
            end = start + k
            width, total = sorted_lengths[end - 1], prefix[end] - prefix[start]
            if not fits(k, width, total):
                continue
            waste = width * k - total
            if best is None or waste < best[0]:
                best = (waste, start)
        if best is not None:
            return sorted(order[best[1] : best[1] + k])
    return [0]
