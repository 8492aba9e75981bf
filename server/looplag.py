"""How late the event loop runs its callbacks: the wait a request meets before its handler runs.

Under overload the loop has many ready callbacks (answers, refusals, new connections), and a
request's bytes wait in the socket until the loop gets to them. The handler cannot see that
wait, but the client does, so admission adds it to each request's elapsed time. Measured as
node's `monitorEventLoopDelay` does: a timer every `interval_s` notes how late it fired.
"""

from __future__ import annotations

import asyncio
from collections import deque


class LoopLag:
    """`start()` on the loop; `value` is the mean lateness (seconds) of the last `window` beats."""

    def __init__(self, interval_s: float = 0.005, window: int = 32) -> None:
        self.interval_s = interval_s
        self._lags: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.value = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_at(self._due, self._beat, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        lag = max(now - self._due, 0.0)
        if len(self._lags) == self._lags.maxlen:
            self._sum -= self._lags[0]
        self._lags.append(lag)
        self._sum += lag
        self.value = self._sum / len(self._lags)
        self._due = now + self.interval_s
        self._handle = loop.call_at(self._due, self._beat, loop)
