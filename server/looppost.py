"""Calls from worker threads onto the event loop, one wake-up for many.

`loop.call_soon_threadsafe` writes to the loop's self-pipe on every call: a system call on
the worker and a read on the loop for each answer. Under load the loop is busy anyway, so
calls posted while an earlier wake-up is still pending ride along with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class LoopPoster:
    """`post(callback, *args)` from any thread: run on `loop`'s thread, in posting order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def post(self, callback: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._calls.append((callback, args))
            wake = len(self._calls) == 1  # else a wake-up is pending and will run this call too
        if wake:
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for callback, args in calls:
            try:
                callback(*args)
            except Exception as exc:  # as the loop would: one failed call must not drop the others
                self._loop.call_exception_handler({"message": "posted call failed", "exception": exc})
