"""A lean HTTP/1.1 client for the open-loop generator: keep-alive connections, requests
serialised once, responses framed by Content-Length.

The generator shares the CPUs with the server it measures, so every millisecond it spends
per request is taken from the server. aiohttp's client cost ~0.65 ms of CPU per request
here, this one ~0.3 ms (docs/RESULTS.md): it writes pre-built bytes and reads only the
status line and the headers that frame the answer, as wrk and vegeta do. It speaks only
what the benchmark needs: POST (or GET) with a body of known length to one host, and
answers with a Content-Length or closing the connection.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the answer was not HTTP the client can read."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self._head: tuple[int, int, bool] | None = None  # status, body length (-1: until close), close
        self._body_start = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver()

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def send(self, request: bytes) -> asyncio.Future:
        self.buffer.clear()
        self._head = None
        self.waiter = asyncio.get_running_loop().create_future()
        if self.transport is None:  # LeanClient sends only on a connection it made: never here
            raise HttpError("not connected")
        self.transport.write(request)
        return self.waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _deliver(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        if self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            try:
                self._head = _parse_head(bytes(self.buffer[:end]))
            except (ValueError, IndexError):
                self.waiter.set_exception(HttpError("malformed response head"))
                self.abort()
                return
            self._body_start = end + 4
        status, length, close = self._head
        if length >= 0 and len(self.buffer) - self._body_start >= length:
            body = bytes(self.buffer[self._body_start : self._body_start + length])
            if close:
                self.abort()
            self.waiter.set_result((status, body))

    def _finish(self) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if self._head is not None and self._head[1] < 0:  # no Content-Length: the body ends at EOF
            self.waiter.set_result((self._head[0], bytes(self.buffer[self._body_start :])))
        else:
            self.waiter.set_exception(HttpError("connection closed before the answer was complete"))


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.split(b"\r\n")
    version, status = lines[0].split(b" ", 2)[:2]
    length, close = -1, version == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError("chunked answers are not supported")
    return int(status), length, close


class LeanClient:
    """Requests to one `http://host:port`, over a pool of keep-alive connections that grows
    to as many requests as are in flight. Use as an async context manager."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port URL, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self._authority = parts.netloc.encode()
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._all:
            conn.abort()
        self._all.clear()
        self._idle.clear()

    def build(self, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
        """The request's bytes, built once and sent as often as wanted."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._authority.decode()}\r\n"
        if body or method == "POST":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    def request(self, request: bytes, timeout_s: float) -> asyncio.Future:
        """Send pre-built `request`; a future of (status, body), or of asyncio.TimeoutError
        or HttpError. No task per request when a connection is idle: the open-loop
        generator fires thousands of these from timer callbacks.

        A connection whose request timed out or failed is closed, never reused: its late
        answer would be read as the next request's.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return self._send(conn, request, deadline)
            self._all.discard(conn)  # the server closed it while idle
        return loop.create_task(self._connect_and_send(request, deadline))

    async def _connect_and_send(self, request: bytes, deadline: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), max(0.0, deadline - loop.time())
            )
        except OSError as exc:
            raise HttpError(f"connect failed: {exc}") from None
        self._all.add(conn)
        return await self._send(conn, request, deadline)

    def _send(self, conn: _Connection, request: bytes, deadline: float) -> asyncio.Future:
        waiter = conn.send(request)
        timer = asyncio.get_running_loop().call_at(deadline, _expire, waiter)

        def settle(fut: asyncio.Future) -> None:
            timer.cancel()
            if fut.cancelled() or fut.exception() is not None or conn.closed:
                conn.abort()
                self._all.discard(conn)
            else:
                self._idle.append(conn)

        waiter.add_done_callback(settle)
        return waiter


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())
