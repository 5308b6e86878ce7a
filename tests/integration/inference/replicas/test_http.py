"""The lean HTTP client against a local server: framing, keep-alive, and a peer that goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from streams.inference.replicas.http import HttpPool


async def serve(handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def each_request(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Request bodies on one connection until the client goes away."""
    while True:
        try:
            yield await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return


class RequestServer:
    """A local server that hands each request body on each connection to ``respond(body, writer)``
    (which returns False to close the connection) and counts the connections it accepted."""

    def __init__(self, respond: Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]) -> None:
        self.respond = respond
        self.connections = 0

    async def start(self) -> tuple[asyncio.Server, int]:
        return await serve(self._handle)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        async for body in each_request(reader):
            if not await self.respond(body, writer):
                writer.close()
                return


async def test_content_length_chunked_and_keep_alive() -> None:
    async def respond(body: bytes, writer: asyncio.StreamWriter) -> bool:
        if body == b"chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        return True

    srv = RequestServer(respond)
    server, port = await srv.start()
    pool = HttpPool(f"http://127.0.0.1:{port}/v1")
    r1 = await pool.request("POST", "/x", b"hello")
    r2 = await pool.request("POST", "/x", b"chunked")
    r3 = await pool.request("POST", "/x", b"again")
    assert (r1.status, r1.body) == (201, b"hello") and r2.body == b"chunked" and r3.body == b"again"
    assert srv.connections == 1  # one persistent connection for all three
    pool.close()
    server.close()


async def test_peer_closing_idle_connection_is_not_a_hang() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()  # the server drops the keep-alive connection after one response

    server, port = await serve(handler)
    pool = HttpPool(f"http://127.0.0.1:{port}")
    assert (await pool.request("POST", "/a", b"1")).body == b"1"
    await asyncio.sleep(0.05)
    assert (await asyncio.wait_for(pool.request("POST", "/a", b"2"), 2)).body == b"2"  # a new connection
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await asyncio.wait_for(pool.request("POST", "/a", b"3"), 2)  # refused, at once


async def test_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server, port = await serve(handler)
    pool = HttpPool(f"http://127.0.0.1:{port}")
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/slow", timeout=0.2)
    server.close()


async def test_headers_connection_close_and_split_reads() -> None:
    async def respond(body: bytes, writer: asyncio.StreamWriter) -> bool:
        if body == b"close":
            writer.write(b"HTTP/1.1 503 Busy\r\nretry-after:  7 \r\nCONNECTION: Close\r\n"
                         b"Content-Length: 4\r\n\r\nbusy")
            await writer.drain()
            return False
        for part in (b"HTTP/1.1 200 OK\r\nX-Extra: a:b\r\nconTent-LENGTH: 11", b"\r\n\r\nhello", b" world"):
            writer.write(part)  # head and body in pieces, header names in odd case
            await writer.drain()
            await asyncio.sleep(0.01)
        return True

    srv = RequestServer(respond)
    server, port = await srv.start()
    pool = HttpPool(f"http://127.0.0.1:{port}")
    r1 = await pool.request("POST", "/a", b"split", timeout=5)
    assert (r1.status, r1.body, r1.headers["x-extra"]) == (200, b"hello world", "a:b")
    r2 = await pool.request("POST", "/a", b"close", timeout=5)  # on the same keep-alive connection
    assert (r2.status, r2.body, r2.headers["retry-after"]) == (503, b"busy", "7") and srv.connections == 1
    r3 = await pool.request("POST", "/a", b"split", timeout=5)  # the closed connection is not reused
    assert r3.body == b"hello world" and srv.connections == 2
    pool.close()
    server.close()
