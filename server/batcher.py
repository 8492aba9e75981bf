"""Dynamic micro-batching: a bounded queue of tokenized texts, and a fixed number of
dedicated inference threads (model instances) that each take the next batch themselves.

Each queued text is an `Entry` with its own Future, token count and deadline. A free worker
waits for the first text, then takes a batch when it is full (texts or padded tokens) or
`max_wait` has passed since the oldest text arrived. While every worker runs a batch, the
queue keeps filling, so under load the next batch is ready the moment a worker is free:
batching costs latency only when the server is idle.

Workers pull: a worker that finishes a batch takes the next one at once, under a lock,
without waiting for the event loop to be scheduled. On a 2-core box the loop thread shares
the cores with the workers, and when dispatch went through it, paired runs gave a higher p95
at the same arrival rate in 5 of 6 pairs (docs/RESULTS.md, "Workers pull their next batch").
The loop only queues texts, resolves futures, and fails texts whose deadline passes while every
worker is busy.

Several workers share one ONNX Runtime session (its `run` is thread-safe). On a CPU, two
single-threaded runs side by side do more work per second than one run split across two
threads, which waits at every parallel section for its slower half (docs/BENCHMARKS.md).

The policy is two pure functions (server/batching.py: `dispatch_delay`, `select_batch`) so it
can be tested with numbers, without an event loop. The model code (`run_batch`) receives a list of id
arrays and returns one probability row per array; it knows nothing of queues or HTTP.

For latency-aware admission (server/admission.py) the batcher reports its `backlog` (what is
queued and what the workers are running) and feeds every batch's time to the cost model. A
text may carry a latest start (`shed_at`): still queued then, it is shed (`Shed`), never run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.admission import Backlog, estimated_batches
from server.batching import BatchLimits, dispatch_delay, select_batch
from server.costmodel import BatchCostModel
from server.looppost import LoopPoster
from server.metrics import Metrics

log = logging.getLogger("server.batcher")

RunBatch = Callable[[list[np.ndarray]], np.ndarray]
# Inference threads run a little below the event loop's priority. On a box with as many workers
# as cores the loop otherwise waits for a core behind a batch, and every answer, refusal and
# new request waits with it: under overload a refusal's latency is mostly that wait. The cores
# stay as busy as before; the loop only goes first.
INFERENCE_NICE = 5


class QueueFull(Exception):
    """The queue cannot take these texts now; the caller should retry later."""


class DeadlineExceeded(Exception):
    """The text's deadline passed before its batch started; it was never run."""


class Shed(Exception):
    """The text could no longer finish within its latency budget; it was dropped unrun."""


class BatchFailed(Exception):
    """The batch this text was in raised; only that batch's texts see this."""


class ShuttingDown(Exception):
    """The batcher stopped before this text was run."""


@dataclass(frozen=True)
class BatchResult:
    probabilities: np.ndarray
    batch_size: int


@dataclass(eq=False)
class Entry:
    ids: np.ndarray
    future: asyncio.Future[BatchResult]
    arrival: float
    deadline: float
    shed_at: float = float("inf")  # latest start that still meets the latency budget
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = len(self.ids)


class MicroBatcher:
    """Owns the queue, the inference worker threads and the deadline watchdog task."""

    def __init__(
        self,
        run_batch: RunBatch,
        limits: BatchLimits,
        max_queue: int,
        metrics: Metrics | None = None,
        workers: int = 1,
        cost: BatchCostModel | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._run_batch = run_batch
        self.limits = limits
        self.max_queue = max_queue
        self._metrics = metrics
        self.workers = workers
        self.cost = cost
        # Guards _pending and _stopping: the loop thread adds texts, workers take batches.
        self._cond = threading.Condition()
        self._pending: list[Entry] = []
        self._stopping = False
        self._wake = asyncio.Event()  # the watchdog's earliest deadline moved earlier
        self._armed = float("inf")  # the deadline the watchdog's timer is set for (loop thread only)
        self._poster: LoopPoster | None = None
        self._task: asyncio.Task[None] | None = None
        self._threads: list[threading.Thread] = []
        # What the queue holds, recounted at every change (under the lock) for `backlog`:
        # (small texts, their tokens, big texts, their tokens); big = over half the token budget.
        self._queued = (0, 0, 0, 0)
        # Worker index -> (start, predicted seconds) of the batch it runs; written by that worker.
        self._running: dict[int, tuple[float, float]] = {}

    @property
    def depth(self) -> int:
        return len(self._pending)

    def backlog(self, now: float) -> Backlog:
        """What is ahead of a text queued at `now` (monotonic clock). Read without the lock:
        a snapshot a batch old at worst, which the admission threshold's steering absorbs."""
        small, small_tokens, big, big_tokens = self._queued
        running = sum(max(predicted - (now - start), 0.0) for start, predicted in list(self._running.values()))
        batches = estimated_batches(small, small_tokens, big, self.limits.max_batch_size, self.limits.max_batch_tokens)
        return Backlog(running_s=running, queued_tokens=small_tokens + big_tokens, queued_batches=batches)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._poster = LoopPoster(loop)
        self._task = loop.create_task(self._watch_deadlines(), name="batcher-deadlines")
        self._threads = [
            threading.Thread(target=self._work, args=(k,), name=f"inference_{k}", daemon=True)
            for k in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, seqs: Sequence[np.ndarray], deadline: float, shed_at: Sequence[float] | None = None
    ) -> list[asyncio.Future[BatchResult]]:
        """Queue all texts of one request, or none of them (QueueFull) - never a wait.
        `shed_at` (one per text): latest starts, past which a queued text is shed."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("server is shutting down")
            if len(self._pending) + len(seqs) > self.max_queue:
                raise QueueFull(f"queue holds {len(self._pending)} of {self.max_queue} texts")
            now = loop.time()
            sheds = shed_at if shed_at is not None else [float("inf")] * len(seqs)
            entries = [Entry(ids, loop.create_future(), now, deadline, shed) for ids, shed in zip(seqs, sheds)]
            self._pending.extend(entries)
            self._set_depth()
            self._cond.notify(len(entries))
        # Deadlines mostly arrive in order, so the watchdog's timer rarely needs to move: waking
        # it for every text cost the loop an extra task step per request.
        if min(deadline, min((e.shed_at for e in entries), default=deadline)) < self._armed:
            self._wake.set()
        return [e.future for e in entries]

    async def stop(self) -> None:
        """Finish the running batches, fail what is still queued, stop the worker threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        # A worker's last answers were handed to the loop before its thread ended: let them land.
        await asyncio.sleep(0)
        with self._cond:
            left, self._pending = self._pending, []
            self._set_depth()
        _fail(left, ShuttingDown("server shut down before this text was run"))

    # -- workers (threads) ------------------------------------------------------

    def _work(self, index: int) -> None:
        _lower_priority(INFERENCE_NICE)
        while True:
            try:
                batch = self._take(index)
            except Exception:
                log.exception("batching error; failing queued texts")
                with self._cond:
                    failed, self._pending = self._pending, []
                    self._set_depth()
                self._post(_fail, failed, BatchFailed("batching error"))
                time.sleep(0.01)
                continue
            if batch is None:
                return
            self._observe(batch)
            tokens = sum(e.tokens for e in batch)
            try:
                started = time.perf_counter()
                probs = self._run_batch([e.ids for e in batch])
                seconds = time.perf_counter() - started
                if len(probs) != len(batch):
                    raise RuntimeError(f"runner returned {len(probs)} rows for {len(batch)} texts")
            except Exception as exc:
                self._running.pop(index, None)
                log.error("inference batch of %d texts failed: %r", len(batch), exc, exc_info=exc)
                if self._metrics:
                    self._metrics.batch_failures.inc()
                self._post(_fail, batch, BatchFailed("inference failed for this batch"))
                continue
            self._running.pop(index, None)
            if self.cost is not None:
                self.cost.observe(tokens, seconds)
            if self._metrics:
                self._metrics.inference_duration.observe(seconds)
            self._post(_answer, batch, probs)

    def _take(self, index: int = -1) -> list[Entry] | None:
        """Block until a batch is due (see dispatch_delay) and take it; None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                self._drop_dead(now)
                if not self._pending:
                    self._cond.wait()
                    continue
                delay = dispatch_delay(
                    len(self._pending),
                    max(e.tokens for e in self._pending),
                    now - self._pending[0].arrival,
                    self.limits,
                )
                if delay == 0.0:
                    break
                self._cond.wait(delay)
            chosen = set(select_batch([e.tokens for e in self._pending], self.limits))
            batch = [e for i, e in enumerate(self._pending) if i in chosen]
            self._pending = [e for i, e in enumerate(self._pending) if i not in chosen]
            # Counted as running before it leaves the queue's counts, under the same lock, so
            # `backlog` never misses it in between.
            line = self.cost.line if self.cost is not None else None
            self._running[index] = (time.monotonic(), line.seconds(sum(e.tokens for e in batch)) if line else 0.0)
            self._set_depth()
        return batch

    def _observe(self, batch: list[Entry]) -> None:
        if self._metrics:
            m, now, width = self._metrics, time.monotonic(), max(e.tokens for e in batch)
            for entry in batch:
                m.queue_wait.observe(now - entry.arrival)
            m.batch_size.observe(len(batch))
            m.batch_tokens.observe(width * len(batch))
            m.padding_ratio.observe(1.0 - sum(e.tokens for e in batch) / (width * len(batch)))

    # -- deadlines (event loop) ---------------------------------------------------

    async def _watch_deadlines(self) -> None:
        """Fail queued texts when their deadline passes, also while every worker is busy."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            with self._cond:
                self._drop_dead(time.monotonic())
                first = min((min(e.deadline, e.shed_at) for e in self._pending), default=None)
            self._armed = float("inf") if first is None else first
            # A timer instead of asyncio.wait_for, which before Python 3.12 can swallow a
            # cancel that lands as the event is set (stop() then waits forever).
            timer = None if first is None else loop.call_later(max(first - time.monotonic(), 0.0), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    def _drop_dead(self, now: float) -> None:
        """Under the lock: skip texts whose caller went away; fail texts whose deadline passed
        and shed those past their latest start (never run). Futures are only touched on the
        loop's thread."""
        keep, expired, shed = [], [], []
        for entry in self._pending:
            if entry.future.done():  # cancelled: the client disconnected or its handler gave up
                continue
            if entry.deadline <= now:
                expired.append(entry)
            elif entry.shed_at <= now:
                shed.append(entry)
            else:
                keep.append(entry)
        if len(keep) == len(self._pending):
            return
        self._pending = keep
        self._set_depth()
        for entries, exc in (
            (expired, DeadlineExceeded("deadline passed while queued")),
            (shed, Shed("could not finish within its latency budget")),
        ):
            if entries:
                if self._metrics:
                    for entry in entries:
                        self._metrics.queue_wait.observe(now - entry.arrival)
                self._post(_fail, entries, exc)

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        """Run `callback(*args)` on the event loop: futures are resolved only from its thread."""
        if self._poster is None:
            raise RuntimeError("MicroBatcher used before start()")
        self._poster.post(callback, *args)

    def _set_depth(self) -> None:
        """Under the lock, after every change to the queue: its counts for `backlog` and the gauge."""
        half = self.limits.max_batch_tokens / 2
        small = small_tokens = big = big_tokens = 0
        for entry in self._pending:
            if entry.tokens > half:
                big, big_tokens = big + 1, big_tokens + entry.tokens
            else:
                small, small_tokens = small + 1, small_tokens + entry.tokens
        self._queued = (small, small_tokens, big, big_tokens)
        if self._metrics:
            self._metrics.queue_depth.set(len(self._pending))


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value (Linux: per thread). Best effort: elsewhere, or where it
    is refused, the thread keeps the process's priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except (AttributeError, OSError):
        pass


def _answer(batch: list[Entry], probs: np.ndarray) -> None:
    for entry, row in zip(batch, probs):
        if not entry.future.done():
            entry.future.set_result(BatchResult(row, len(batch)))


def _fail(entries: list[Entry], exc: Exception) -> None:
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(exc)
