"""The tokenizer stage groups the requests that wait for its thread, and the loop poster runs
calls from threads on the loop in order; both with real threads and a real event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.looppost import LoopPoster
from server.tokenizing import TokenizerStage


class LengthEncoder:
    """Ids = [len(text)]; records each call's texts and can be slowed or made to fail on one text."""

    def __init__(self, delay_s: float = 0.0, bad: str = "") -> None:
        self.calls: list[list[str]] = []
        self.delay_s, self.bad = delay_s, bad

    def __call__(self, texts):
        self.calls.append(list(texts))
        time.sleep(self.delay_s)
        if self.bad in texts:
            raise ValueError(f"cannot encode {self.bad!r}")
        return [np.array([len(t)]) for t in texts]


def ids(result) -> list[int]:
    return [int(a[0]) for a in result]


async def test_requests_waiting_for_the_thread_are_encoded_in_one_call():
    encoder = LengthEncoder(delay_s=0.05)
    stage = TokenizerStage(encoder)
    stage.start()
    try:
        first = stage.encode(["a"])
        await asyncio.sleep(0.01)  # the first call is running: the next three wait for it
        rest = [stage.encode(["bb", "ccc"]), stage.encode(["dddd"]), stage.encode(["eeeee"])]
        results = await asyncio.gather(first, *rest)
    finally:
        stage.stop()
    assert [ids(r) for r in results] == [[1], [2, 3], [4], [5]]
    assert encoder.calls == [["a"], ["bb", "ccc", "dddd", "eeeee"]]


async def test_a_failing_text_fails_its_own_request_only():
    encoder = LengthEncoder(delay_s=0.02, bad="boom")
    stage = TokenizerStage(encoder)
    stage.start()
    try:
        first = stage.encode(["x"])
        await asyncio.sleep(0.005)
        good, bad = stage.encode(["ok"]), stage.encode(["boom"])
        results = await asyncio.gather(first, good, bad, return_exceptions=True)
    finally:
        stage.stop()
    assert ids(results[0]) == [1] and ids(results[1]) == [2]
    assert isinstance(results[2], ValueError)


async def test_a_cancelled_request_is_not_encoded():
    encoder = LengthEncoder(delay_s=0.03)
    stage = TokenizerStage(encoder)
    stage.start()
    try:
        first = stage.encode(["a"])
        await asyncio.sleep(0.005)
        gone, kept = stage.encode(["gone"]), stage.encode(["kept"])
        gone.cancel()
        await first
        assert ids(await kept) == [4]
    finally:
        stage.stop()
    assert ["gone"] not in encoder.calls and all("gone" not in call for call in encoder.calls)


async def test_calls_posted_from_threads_run_on_the_loop_in_order():
    loop = asyncio.get_running_loop()
    poster = LoopPoster(loop)
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()
    loop_thread = threading.get_ident()

    def record(thread: int, k: int) -> None:
        assert threading.get_ident() == loop_thread
        seen.append((thread, k))
        if len(seen) == 4 * 500:
            done.set()

    def post_many(thread: int) -> None:
        for k in range(500):
            poster.post(record, thread, k)

    threads = [threading.Thread(target=post_many, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    await asyncio.wait_for(done.wait(), 10)
    for t in threads:
        t.join()
    for thread in range(4):
        assert [k for t, k in seen if t == thread] == list(range(500))


async def test_a_failing_posted_call_does_not_drop_the_others():
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    poster = LoopPoster(loop)
    ran: list[int] = []
    poster.post(lambda: 1 / 0)
    poster.post(ran.append, 7)
    await asyncio.sleep(0.05)
    assert ran == [7] and isinstance(errors[0]["exception"], ZeroDivisionError)


async def test_stage_needs_start():
    with pytest.raises(RuntimeError, match="before start"):
        TokenizerStage(LengthEncoder()).encode(["a"])
