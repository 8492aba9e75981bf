"""The open-loop generator's HTTP client against real servers on loopback: keep-alive reuse,
timeouts, closed and refused connections, malformed answers."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from standin_server import SEEN, create_app

from bench.httpclient import HttpError, LeanClient
from bench.procs import free_port


async def test_posts_and_reuses_one_connection(aiohttp_server):
    server = await aiohttp_server(create_app())
    async with LeanClient(str(server.make_url(""))) as client:
        request = client.build("POST", "/v1/predict", b'{"text": "a good film"}')
        answers = [await client.request(request, 2.0) for _ in range(5)]
        assert len(client._all) == 1  # sequential requests share one keep-alive connection
    assert all(status == 200 and b'"positive"' in body for status, body in answers)
    assert server.app[SEEN] == [{"text": "a good film"}] * 5


async def test_concurrent_requests_open_a_connection_each(aiohttp_server):
    server = await aiohttp_server(create_app(delay_s=0.1))
    async with LeanClient(str(server.make_url(""))) as client:
        request = client.build("POST", "/v1/predict", b'{"text": "bad"}')
        answers = await asyncio.gather(*(client.request(request, 2.0) for _ in range(3)))
        assert len(client._all) == 3 and len(client._idle) == 3
    assert [status for status, _ in answers] == [200, 200, 200]


async def test_error_status_and_get(aiohttp_server):
    server = await aiohttp_server(create_app())
    async with LeanClient(str(server.make_url(""))) as client:
        status, body = await client.request(client.build("POST", "/v1/predict", b'{"text": 5}'), 2.0)
        assert status == 422 and b"invalid_input" in body
        status, body = await client.request(client.build("GET", "/readyz"), 2.0)
        assert status == 200 and body == b'{"status": "ready"}'


async def test_timeout_closes_the_connection(aiohttp_server):
    server = await aiohttp_server(create_app(delay_s=0.5))
    async with LeanClient(str(server.make_url(""))) as client:
        request = client.build("POST", "/v1/predict", b'{"text": "x"}')
        with pytest.raises(asyncio.TimeoutError):
            await client.request(request, 0.1)
        assert not client._all  # its late answer must never be read as the next request's


async def test_refused_connection_is_an_http_error():
    async with LeanClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(HttpError, match="connect failed"):
            await client.request(client.build("GET", "/readyz"), 1.0)


async def _raw_server(answer: bytes, close: bool):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if close:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "answer, close, expected",
    [
        # No Content-Length: the body ends when the server closes.
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello", True, (200, b"hello")),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno", True, (503, b"no")),
    ],
)
async def test_answers_framed_by_close(answer, close, expected):
    server = await _raw_server(answer, close)
    port = server.sockets[0].getsockname()[1]
    async with server, LeanClient(f"http://127.0.0.1:{port}") as client:
        assert await client.request(client.build("GET", "/"), 2.0) == expected
        await asyncio.sleep(0.05)
        assert not client._idle  # closed by the server: never reused


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed before the answer was complete"),
        (b"garbage\r\n\r\n", "malformed response head"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "malformed response head"),
    ],
)
async def test_broken_answers_are_http_errors(answer, message):
    server = await _raw_server(answer, close=True)
    port = server.sockets[0].getsockname()[1]
    async with server, LeanClient(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(HttpError, match=message):
            await client.request(client.build("GET", "/"), 2.0)
        assert not client._all


async def test_connection_closed_while_idle_is_replaced(aiohttp_server):
    app = web.Application()

    async def hello(_request):
        return web.Response(text="hi")

    app.router.add_get("/", hello)
    server = await aiohttp_server(app)
    async with LeanClient(str(server.make_url(""))) as client:
        request = client.build("GET", "/")
        assert await client.request(request, 2.0) == (200, b"hi")
        (conn,) = client._idle
        conn.transport.close()  # as a server's keep-alive timeout would
        await asyncio.sleep(0.05)
        assert await client.request(request, 2.0) == (200, b"hi")
        assert conn not in client._all and len(client._all) == 1


def test_rejects_urls_it_cannot_speak():
    with pytest.raises(ValueError, match="http://host:port"):
        LeanClient("https://example.com")
