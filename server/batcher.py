"""Dynamic micro-batching: a bounded queue of tokenized texts, one loop forming batches,
inference in a fixed number of dedicated worker threads (model instances).

Each queued text is an `Entry` with its own Future, token count and deadline. The loop
waits for the first text, then, as soon as a worker is free, dispatches when the batch
is full (texts or padded tokens) or `max_wait` has passed since the oldest text arrived.
While every worker runs a batch, the queue keeps filling, so under load the next batch
is ready the moment a worker is free: batching costs latency only when the server is idle.

Several workers share one ONNX Runtime session (its `run` is thread-safe). On a CPU, two
single-threaded runs side by side do more work per second than one run split across two
threads, which waits at every parallel section for its slower half (docs/BENCHMARKS.md).

The policy is two pure functions (`dispatch_delay`, `select_batch`) so it can be tested
with numbers, without an event loop. The model code (`run_batch`) receives a list of id
arrays and returns one probability row per array; it knows nothing of queues or HTTP.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from server.metrics import Metrics

log = logging.getLogger("server.batcher")

RunBatch = Callable[[list[np.ndarray]], np.ndarray]


class QueueFull(Exception):
    """The queue cannot take these texts now; the caller should retry later."""


class DeadlineExceeded(Exception):
    """The text's deadline passed before its batch started; it was never run."""


class BatchFailed(Exception):
    """The batch this text was in raised; only that batch's texts see this."""


class ShuttingDown(Exception):
    """The batcher stopped before this text was run."""


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_s: float = 0.005
    # Most padding a batch of several texts may carry (share of its padded tokens). On a CPU
    # a padded token costs what a real one does, so a long and a short text are cheaper in
    # two batches (run side by side by two workers) than padded into one. 1.0: no limit.
    max_padding: float = 1.0


@dataclass(frozen=True)
class BatchResult:
    probabilities: np.ndarray
    batch_size: int


@dataclass(eq=False)
class Entry:
    ids: np.ndarray
    future: asyncio.Future
    arrival: float
    deadline: float
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = len(self.ids)


def dispatch_delay(n_pending: int, longest: int, oldest_wait_s: float, worker_idle: bool,
                   limits: BatchLimits) -> float | None:
    """Seconds until the next batch should start: 0 = now, None = wait for an event.

    Nothing is dispatched while every worker is busy: the batch keeps growing for free
    instead of queueing behind the running ones in the executor.
    """
    if n_pending == 0 or not worker_idle:
        return None
    full = n_pending >= limits.max_batch_size or n_pending * longest >= limits.max_batch_tokens
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
            return sorted(order[best[1]: best[1] + k])
    return [0]


class MicroBatcher:
    """Owns the queue, the batching loop task and the inference worker threads."""

    def __init__(self, run_batch: RunBatch, limits: BatchLimits, max_queue: int,
                 metrics: Metrics | None = None, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._run_batch = run_batch
        self.limits = limits
        self.max_queue = max_queue
        self._metrics = metrics
        self._pending: list[Entry] = []
        self._wake = asyncio.Event()
        self.workers = workers
        self._busy = 0  # workers running a batch
        self._running: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._stopping = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    def submit(self, seqs: Sequence[np.ndarray], deadline: float) -> list[asyncio.Future]:
        """Queue all texts of one request, or none of them (QueueFull) - never a wait."""
        if self._stopping:
            raise ShuttingDown("server is shutting down")
        if len(self._pending) + len(seqs) > self.max_queue:
            raise QueueFull(f"queue holds {len(self._pending)} of {self.max_queue} texts")
        loop = asyncio.get_running_loop()
        now = loop.time()
        entries = [Entry(ids, loop.create_future(), now, deadline) for ids in seqs]
        self._pending.extend(entries)
        self._set_depth()
        self._wake.set()
        return [e.future for e in entries]

    async def stop(self) -> None:
        """Finish the running batches, fail what is still queued, stop the worker threads."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(ShuttingDown("server shut down before this text was run"))
        self._pending.clear()
        self._set_depth()
        self._executor.shutdown(wait=True)

    # -- loop -----------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug here must not leave every caller hanging
                log.exception("batching loop error; failing queued texts")
                for entry in self._pending:
                    if not entry.future.done():
                        entry.future.set_exception(BatchFailed("batching loop error"))
                self._pending.clear()
                self._set_depth()
                await asyncio.sleep(0.01)

    async def _step(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            self._drop_dead(now)
            delay = None
            if self._pending:
                delay = dispatch_delay(len(self._pending), max(e.tokens for e in self._pending),
                                       now - self._pending[0].arrival, self._busy < self.workers, self.limits)
            if delay == 0.0:
                self._dispatch(now)
                continue
            # Wake for: a new text, a worker finishing, the wait running out, or a deadline.
            timeout = delay
            if self._pending:
                first_deadline = min(e.deadline for e in self._pending) - now
                timeout = first_deadline if timeout is None else min(timeout, first_deadline)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=None if timeout is None else max(timeout, 0.0))
            except asyncio.TimeoutError:
                pass

    def _drop_dead(self, now: float) -> None:
        """Skip texts whose caller went away; fail texts whose deadline passed (never run)."""
        keep = []
        for entry in self._pending:
            if entry.future.done():  # cancelled: the client disconnected or its handler gave up
                continue
            if entry.deadline <= now:
                entry.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                if self._metrics:
                    self._metrics.queue_wait.observe(now - entry.arrival)
                continue
            keep.append(entry)
        if len(keep) != len(self._pending):
            self._pending = keep
            self._set_depth()

    def _dispatch(self, now: float) -> None:
        chosen = set(select_batch([e.tokens for e in self._pending], self.limits))
        batch = [e for i, e in enumerate(self._pending) if i in chosen]
        self._pending = [e for i, e in enumerate(self._pending) if i not in chosen]
        self._set_depth()
        self._busy += 1
        task = asyncio.get_running_loop().create_task(self._execute(batch, now))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[Entry], started: float) -> None:
        loop = asyncio.get_running_loop()
        try:  # everything inside: a worker slot and its texts' futures must never be lost
            if self._metrics:
                m, width = self._metrics, max(e.tokens for e in batch)
                for entry in batch:
                    m.queue_wait.observe(started - entry.arrival)
                m.batch_size.observe(len(batch))
                m.batch_tokens.observe(width * len(batch))
                m.padding_ratio.observe(1.0 - sum(e.tokens for e in batch) / (width * len(batch)))
            probs, seconds = await loop.run_in_executor(self._executor, _timed, self._run_batch,
                                                        [e.ids for e in batch])
            if len(probs) != len(batch):
                raise RuntimeError(f"runner returned {len(probs)} rows for {len(batch)} texts")
        except Exception as exc:  # noqa: BLE001 - any failure stays inside this batch
            log.error("inference batch of %d texts failed: %r", len(batch), exc, exc_info=exc)
            if self._metrics:
                self._metrics.batch_failures.inc()
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(BatchFailed("inference failed for this batch"))
        else:
            if self._metrics:
                self._metrics.inference_duration.observe(seconds)
            for entry, row in zip(batch, probs):
                if not entry.future.done():
                    entry.future.set_result(BatchResult(row, len(batch)))
        finally:
            self._busy -= 1
            self._wake.set()

    def _set_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.set(len(self._pending))


def _timed(run_batch: RunBatch, seqs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    probs = run_batch(seqs)
    return probs, time.perf_counter() - start
