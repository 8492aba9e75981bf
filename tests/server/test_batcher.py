"""MicroBatcher without HTTP: the pure dispatch policy, then the loop with a fake model function."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.batcher import (
    BatchFailed,
    DeadlineExceeded,
    MicroBatcher,
    QueueFull,
    ShuttingDown,
)
from server.batching import BatchLimits, dispatch_delay, select_batch
from server.metrics import Metrics

LIMITS = BatchLimits(max_batch_size=4, max_batch_tokens=100, max_wait_s=0.01)


# -- dispatch_delay ----------------------------------------------------------------


def test_nothing_pending_waits_for_an_event():
    assert dispatch_delay(0, 0, 0.0, LIMITS) is None


def test_full_batch_goes_now():
    assert dispatch_delay(4, 5, 0.0, LIMITS) == 0.0  # texts
    assert dispatch_delay(2, 50, 0.0, LIMITS) == 0.0  # padded tokens


def test_partial_batch_waits_the_rest_of_max_wait():
    assert dispatch_delay(1, 5, 0.004, LIMITS) == pytest.approx(0.006)
    assert dispatch_delay(1, 5, 0.5, LIMITS) == 0.0


def test_batch_no_text_could_join_goes_now():
    # budget 100: a second text would pad to >= 51 tokens each, 102 in all: nothing can join
    assert dispatch_delay(1, 51, 0.0, LIMITS) == 0.0
    assert dispatch_delay(1, 50, 0.0, LIMITS) == pytest.approx(0.01)  # a 50-token text still fits
    assert dispatch_delay(2, 34, 0.0, LIMITS) == 0.0
    assert dispatch_delay(2, 33, 0.0, LIMITS) == pytest.approx(0.01)


# -- select_batch ------------------------------------------------------------------


def test_everything_goes_when_it_fits():
    assert select_batch([5, 30, 7], LIMITS) == [0, 1, 2]


def test_size_bound_groups_similar_lengths_around_the_oldest():
    # oldest has length 10: the three closest lengths join it, the long ones wait
    lengths = [10, 90, 11, 95, 9, 12, 80]
    chosen = select_batch(lengths, BatchLimits(4, 10_000, 0.01))
    assert chosen == [0, 2, 4, 5]


def test_token_bound_limits_padded_tokens():
    lengths = [20, 20, 20, 60, 20]
    chosen = select_batch(lengths, LIMITS)  # 100 padded tokens: at most 5 x 20 or 1 x 60
    assert 0 in chosen and 3 not in chosen
    assert len(chosen) * max(lengths[i] for i in chosen) <= LIMITS.max_batch_tokens
    assert len(chosen) == 4


def test_oldest_always_included_even_if_alone_over_budget():
    assert select_batch([500, 5, 5, 5, 5, 5], LIMITS) == [0]


def test_padding_cap_sends_mismatched_lengths_alone():
    no_cap, cap = BatchLimits(4, 1000, 0.0), BatchLimits(4, 1000, 0.0, max_padding=0.1)
    assert select_batch([100, 10], no_cap) == [0, 1]  # 200 padded tokens for 110 real ones
    assert select_batch([100, 10], cap) == [0]
    assert select_batch([10, 100], cap) == [0]
    # Similar lengths still batch: 4 x 100 padded tokens for 385 real ones (3.75% padding).
    assert select_batch([100, 95, 10, 98, 92], cap) == [0, 1, 3, 4]
    assert select_batch([100, 95, 10, 98, 92], BatchLimits(4, 1000, 0.0, max_padding=0.0)) == [0]
    assert select_batch([64, 64, 64], BatchLimits(4, 1000, 0.0, max_padding=0.0)) == [0, 1, 2]


def test_select_batch_properties_random():
    rng = np.random.default_rng(0)
    for _ in range(200):
        limits = BatchLimits(
            int(rng.integers(1, 9)), int(rng.integers(64, 400)), 0.0, float(rng.choice([0.0, 0.1, 0.3, 1.0]))
        )
        lengths = [int(x) for x in rng.integers(2, 64, size=int(rng.integers(1, 30)))]
        chosen = select_batch(lengths, limits)
        assert chosen[0] == 0 and chosen == sorted(set(chosen))
        assert len(chosen) <= limits.max_batch_size
        padded = len(chosen) * max(lengths[i] for i in chosen)
        assert padded <= limits.max_batch_tokens or len(chosen) == 1
        assert sum(lengths[i] for i in chosen) >= (1 - limits.max_padding) * padded - 1e-9


# -- MicroBatcher ------------------------------------------------------------------


class Model:
    """Records batches; returns [1 - x, x] with x = first id / 100; fails batches containing id 666."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, seqs):
        self.batches.append([int(s[0]) for s in seqs])
        self.gate.wait(5)
        if any(int(s[0]) == 666 for s in seqs):
            raise RuntimeError("boom")
        return np.array([[1 - s[0] / 100, s[0] / 100] for s in seqs])


class Tickets:
    """Like Model, but a batch runs only once its first id is released; counts batches running at once."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.active = 0
        self.peak = 0
        self._released: set[int] = set()
        self._everything = False
        self._changed = threading.Condition()

    def __call__(self, seqs):
        first = int(seqs[0][0])
        with self._changed:
            self.batches.append([int(s[0]) for s in seqs])
            self.active += 1
            self.peak = max(self.peak, self.active)
            self._changed.notify_all()
            try:
                if not self._changed.wait_for(lambda: self._everything or first in self._released, 5):
                    raise TimeoutError("never released")
            finally:
                self.active -= 1
        return np.array([[1 - s[0] / 100, s[0] / 100] for s in seqs])

    def release(self, *firsts: int) -> None:
        """Let the batches starting with these ids finish; no ids: every batch, now and later."""
        with self._changed:
            self._released.update(firsts)
            self._everything = self._everything or not firsts
            self._changed.notify_all()

    async def running(self, n: int) -> bool:
        """True once `n` batches are inside the model at the same time (False after 2 s)."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: self.active >= n, 2.0)

        return await asyncio.to_thread(wait)


def seq(first: int, length: int = 4) -> np.ndarray:
    return np.full(length, first, dtype=np.int64)


@pytest.fixture
async def make_batcher():
    made = []

    async def make(limits=LIMITS, max_queue=64, model=None, workers=1):
        batcher = MicroBatcher(model or Model(), limits, max_queue, Metrics(), workers=workers)
        await batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        await batcher.stop()


def far() -> float:
    return asyncio.get_running_loop().time() + 10


async def test_results_come_back_in_order(make_batcher):
    model = Model()
    batcher = await make_batcher(model=model)
    futures = batcher.submit([seq(i) for i in (10, 20, 30)], far())
    results = await asyncio.gather(*futures)
    assert [round(float(r.probabilities[1]), 2) for r in results] == [0.1, 0.2, 0.3]
    assert model.batches == [[10, 20, 30]]
    assert all(r.batch_size == 3 for r in results)


async def test_requests_arriving_together_share_a_batch(make_batcher):
    model = Model()
    batcher = await make_batcher(BatchLimits(8, 1000, 0.02), model=model)
    futures = [batcher.submit([seq(i)], far())[0] for i in range(1, 6)]
    await asyncio.gather(*futures)
    assert model.batches == [[1, 2, 3, 4, 5]]


async def test_max_batch_size_splits_a_large_request(make_batcher):
    model = Model()
    batcher = await make_batcher(BatchLimits(4, 1000, 0.001), model=model)
    results = await asyncio.gather(*batcher.submit([seq(i) for i in range(1, 11)], far()))
    assert sorted(len(b) for b in model.batches) == [2, 4, 4]
    assert [round(float(r.probabilities[1]) * 100) for r in results] == list(range(1, 11))


async def test_batch_forms_while_worker_is_busy(make_batcher):
    model = Model()
    model.gate.clear()
    batcher = await make_batcher(BatchLimits(8, 1000, 0.0), model=model)
    first = batcher.submit([seq(1)], far())
    await asyncio.sleep(0.05)  # batch [1] is now blocked in the worker
    later = [batcher.submit([seq(i)], far())[0] for i in range(2, 6)]
    await asyncio.sleep(0.02)
    model.gate.set()
    await asyncio.gather(*first, *later)
    assert model.batches == [[1], [2, 3, 4, 5]]


async def test_failure_reaches_only_its_batch(make_batcher):
    model = Model()
    batcher = await make_batcher(BatchLimits(2, 1000, 0.0), model=model)
    bad = batcher.submit([seq(666), seq(7)], far())
    good = batcher.submit([seq(8), seq(9)], far())
    outcomes = await asyncio.gather(*bad, *good, return_exceptions=True)
    assert all(isinstance(o, BatchFailed) for o in outcomes[:2])
    assert [round(float(o.probabilities[1]) * 100) for o in outcomes[2:]] == [8, 9]
    after = await batcher.submit([seq(5)], far())[0]  # the loop survived
    assert round(float(after.probabilities[1]) * 100) == 5


async def test_full_queue_refuses_at_once_and_whole_request(make_batcher):
    model = Model()
    model.gate.clear()
    batcher = await make_batcher(BatchLimits(1, 1000, 0.0), max_queue=3, model=model)
    running = batcher.submit([seq(1)], far())
    await asyncio.sleep(0.05)
    queued = batcher.submit([seq(2), seq(3)], far())
    with pytest.raises(QueueFull):
        batcher.submit([seq(4), seq(5)], far())  # 2 + 2 > 3: none of it is queued
    assert batcher.depth == 2
    queued += batcher.submit([seq(6)], far())
    model.gate.set()
    await asyncio.gather(*running, *queued)


async def test_expired_texts_are_dropped_before_inference(make_batcher):
    model = Model()
    model.gate.clear()
    batcher = await make_batcher(BatchLimits(1, 1000, 0.0), model=model)
    loop = asyncio.get_running_loop()
    running = batcher.submit([seq(1)], far())
    await asyncio.sleep(0.05)
    # Queued behind the busy worker: the watchdog's timer is set for its deadline, 10 s out,
    # and must move when a text with an earlier deadline comes.
    waiting = batcher.submit([seq(3)], far())
    await asyncio.sleep(0.05)
    doomed = batcher.submit([seq(2)], loop.time() + 0.05)
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(doomed[0], 1.0)  # fails on time although the worker is still busy
    model.gate.set()
    await asyncio.gather(*running, *waiting)
    assert [2] not in model.batches and all(2 not in b for b in model.batches)


async def test_cancelled_caller_is_skipped(make_batcher):
    model = Model()
    model.gate.clear()
    batcher = await make_batcher(BatchLimits(4, 1000, 0.0), model=model)
    running = batcher.submit([seq(1)], far())
    await asyncio.sleep(0.05)
    gone = batcher.submit([seq(2)], far())
    kept = batcher.submit([seq(3)], far())
    gone[0].cancel()  # the client disconnected
    model.gate.set()
    await asyncio.gather(*running, *kept)
    assert model.batches == [[1], [3]]


async def test_stop_finishes_running_batch_and_fails_queued():
    model = Model()
    model.gate.clear()
    batcher = MicroBatcher(model, BatchLimits(1, 1000, 0.0), 16)
    await batcher.start()
    running = batcher.submit([seq(1)], far())
    await asyncio.sleep(0.05)
    queued = batcher.submit([seq(2)], far())
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.02)
    model.gate.set()
    await stopping
    assert round(float((await running[0]).probabilities[1]) * 100) == 1
    with pytest.raises(ShuttingDown):
        await queued[0]
    with pytest.raises(ShuttingDown):
        batcher.submit([seq(3)], far())


async def test_metrics_record_batches(make_batcher):
    metrics = Metrics()
    batcher = MicroBatcher(Model(), BatchLimits(8, 1000, 0.01), 64, metrics)
    await batcher.start()
    try:
        await asyncio.gather(*batcher.submit([seq(1, 2), seq(2, 6)], far()))
    finally:
        await batcher.stop()
    value = metrics.registry.get_sample_value
    assert value("sentiment_batch_size_sum") == 2
    assert value("sentiment_batch_tokens_sum") == 12
    assert value("sentiment_padding_ratio_sum") == pytest.approx(4 / 12)
    assert value("sentiment_queue_wait_seconds_count") == 2
    assert value("sentiment_inference_duration_seconds_count") == 1


async def test_loop_error_fails_queued_texts_and_loop_survives(make_batcher, monkeypatch):
    import server.batcher as module

    real = module.select_batch
    calls = []

    def broken_once(lengths, limits):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("policy bug")
        return real(lengths, limits)

    monkeypatch.setattr(module, "select_batch", broken_once)
    batcher = await make_batcher()
    with pytest.raises(BatchFailed):
        await asyncio.wait_for(batcher.submit([seq(1)], far())[0], 2)
    result = await asyncio.wait_for(batcher.submit([seq(2)], far())[0], 2)
    assert round(float(result.probabilities[1]) * 100) == 2


# -- inference workers -------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_at_most_workers_batches_run_at_once(make_batcher, workers):
    model = Tickets()
    batcher = await make_batcher(BatchLimits(8, 1000, 0.0), model=model, workers=workers)
    futures = []
    for i in range(1, workers + 1):  # one single-text batch per worker, each held in the model
        futures += batcher.submit([seq(i)], far())
        assert await model.running(i)
    for i in (10, 11, 12):  # every worker busy: these wait in the queue, not in the executor
        futures += batcher.submit([seq(i)], far())
    await asyncio.sleep(0.05)
    assert model.active == workers and batcher.depth == 3
    model.release()
    results = await asyncio.gather(*futures)
    assert [round(float(r.probabilities[1]) * 100) for r in results] == [*range(1, workers + 1), 10, 11, 12]
    assert model.batches == [[i] for i in range(1, workers + 1)] + [[10, 11, 12]]
    assert model.peak == workers


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_below_one_is_refused(workers):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        MicroBatcher(Model(), LIMITS, 8, workers=workers)


@pytest.mark.parametrize("finishes_first", [1, 2])
async def test_stop_waits_for_every_running_batch(finishes_first):
    model = Tickets()
    batcher = MicroBatcher(model, BatchLimits(1, 1000, 0.0), 16, workers=2)
    await batcher.start()
    running = {1: batcher.submit([seq(1)], far())[0]}
    assert await model.running(1)
    running[2] = batcher.submit([seq(2)], far())[0]
    assert await model.running(2)
    queued = batcher.submit([seq(3)], far())
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.02)
    model.release(finishes_first)  # stop() must still wait for the other batch
    await asyncio.sleep(0.05)
    assert not stopping.done() and [f.done() for f in running.values()].count(True) == 1
    model.release(3 - finishes_first)
    await asyncio.wait_for(stopping, 2)
    assert all(f.done() for f in running.values())  # answered by the time stop() returns
    assert {i: round(float(f.result().probabilities[1]) * 100) for i, f in running.items()} == {1: 1, 2: 2}
    with pytest.raises(ShuttingDown):
        await queued[0]
    assert model.batches == [[1], [2]]


async def test_a_free_worker_takes_the_next_batch_while_the_event_loop_is_blocked(make_batcher):
    model = Tickets()
    batcher = await make_batcher(BatchLimits(1, 1000, 0.0), model=model)
    futures = batcher.submit([seq(1), seq(2)], far())
    assert await model.running(1)
    model.release(1)
    # The loop thread is held here (as on a busy CPU, where it waits for a core): the worker
    # must start the queued batch on its own, not wait for the loop to dispatch it.
    deadline = time.monotonic() + 2
    while model.batches != [[1], [2]] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.batches == [[1], [2]]
    model.release()
    results = await asyncio.gather(*futures)
    assert [round(float(r.probabilities[1]) * 100) for r in results] == [1, 2]


async def test_inference_threads_run_below_the_event_loops_priority():
    import os

    from server.batcher import INFERENCE_NICE

    batcher = MicroBatcher(Model(), BatchLimits(max_wait_s=0.0), max_queue=8, workers=2)
    await batcher.start()
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        niceness = [os.getpriority(os.PRIO_PROCESS, t.native_id) for t in batcher._threads]
        assert niceness == [min(base + INFERENCE_NICE, 19)] * 2
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the loop's own thread is untouched
    finally:
        await batcher.stop()


async def test_cost_model_learns_from_every_batch_and_backlog_counts_the_queue():
    from server.costmodel import BatchCostModel

    model, cost = Model(), BatchCostModel()
    model.gate.clear()
    batcher = MicroBatcher(
        model, BatchLimits(max_batch_size=1, max_wait_s=0.0, max_batch_tokens=256), max_queue=8, cost=cost
    )
    await batcher.start()
    try:
        loop = asyncio.get_running_loop()
        futures = batcher.submit([np.array([i] * 100) for i in (1, 2, 3)], loop.time() + 5)
        while len(model.batches) < 1:
            await asyncio.sleep(0.005)
        backlog = batcher.backlog(loop.time())
        assert backlog.queued_tokens == 200 and backlog.queued_batches == 2  # two texts of 100 wait, one runs
        model.gate.set()
        await asyncio.gather(*futures)
        assert cost.observed == 3 and cost.line is not None
    finally:
        await batcher.stop()
