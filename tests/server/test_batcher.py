"""MicroBatcher without HTTP: the pure dispatch policy, then the loop with a fake model function."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from server.batcher import (BatchFailed, BatchLimits, DeadlineExceeded, MicroBatcher, QueueFull, ShuttingDown,
                            dispatch_delay, select_batch)
from server.metrics import Metrics

LIMITS = BatchLimits(max_batch_size=4, max_batch_tokens=100, max_wait_s=0.01)


# -- dispatch_delay ----------------------------------------------------------------


def test_nothing_pending_waits_for_an_event():
    assert dispatch_delay(0, 0, 0.0, True, LIMITS) is None


def test_busy_worker_lets_the_batch_grow():
    assert dispatch_delay(10, 10, 5.0, False, LIMITS) is None


def test_full_batch_goes_now():
    assert dispatch_delay(4, 5, 0.0, True, LIMITS) == 0.0  # texts
    assert dispatch_delay(2, 50, 0.0, True, LIMITS) == 0.0  # padded tokens


def test_partial_batch_waits_the_rest_of_max_wait():
    assert dispatch_delay(1, 5, 0.004, True, LIMITS) == pytest.approx(0.006)
    assert dispatch_delay(1, 5, 0.5, True, LIMITS) == 0.0


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


def test_select_batch_properties_random():
    rng = np.random.default_rng(0)
    for _ in range(200):
        limits = BatchLimits(int(rng.integers(1, 9)), int(rng.integers(64, 400)), 0.0)
        lengths = [int(x) for x in rng.integers(2, 64, size=int(rng.integers(1, 30)))]
        chosen = select_batch(lengths, limits)
        assert chosen[0] == 0 and chosen == sorted(set(chosen))
        assert len(chosen) <= limits.max_batch_size
        assert len(chosen) * max(lengths[i] for i in chosen) <= limits.max_batch_tokens


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


def seq(first: int, length: int = 4) -> np.ndarray:
    return np.full(length, first, dtype=np.int64)


@pytest.fixture
async def make_batcher():
    made = []

    async def make(limits=LIMITS, max_queue=64, model=None):
        batcher = MicroBatcher(model or Model(), limits, max_queue, Metrics())
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
    batcher = await make_batcher(BatchLimits(4, 1000, 0.0), model=model)
    loop = asyncio.get_running_loop()
    running = batcher.submit([seq(1)], far())
    await asyncio.sleep(0.05)
    doomed = batcher.submit([seq(2)], loop.time() + 0.05)
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(doomed[0], 1.0)  # fails on time although the worker is still busy
    model.gate.set()
    await asyncio.gather(*running)
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
