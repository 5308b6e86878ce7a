"""A lean HTTP/1.1 keep-alive client for replica requests.

Why not aiohttp here: measured on this machine, aiohttp's client spends ~370 us of CPU per
chat-completion round trip, more than everything else the consumer does per event; this client
does the same round trip for a fraction of that (docs/performance.md). It implements what
an OpenAI-compatible server needs and nothing more: POST/GET with a body, persistent connections per
origin, Content-Length or chunked responses (or read-to-close), TLS for https URLs, a per-request
deadline, and one transparent retry when a reused keep-alive connection turns out to be closed.
Errors surface as ``ConnectionError`` or ``TimeoutError``; the replica client maps them to
``RetryableError``.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024


class Response:
    """Status, body and the raw header block; ``headers`` is parsed only when asked for."""

    __slots__ = ("status", "body", "_head", "_headers")

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status, self._head, self.body = status, head, body
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Header names lower-cased (the last value wins on repeats)."""
        if self._headers is None:
            self._headers = {}
            for line in self._head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                self._headers[name.strip().lower()] = value.strip()
        return self._headers


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time.

    The response head is scanned once, lower-cased, for the three headers that frame the body
    (``content-length``, ``transfer-encoding: chunked``, ``connection: close``); the rest are
    parsed only if someone reads :attr:`Response.headers`. This is the consumer's per-request path.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received_any = False
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._status = 0
        self._head = b""
        self._length: int | None = None
        self._chunked = False
        self._close_after = False
        self._head_done = False
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._head_done and self._length is None and not self._chunked:
                self._finish(bytes(self._body) + bytes(self._buf))  # body delimited by close
            else:
                self._waiter.set_exception(ConnectionError(f"connection closed: {exc or 'by peer'}"))

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = waiter = self._loop.create_future()
        if self.closed or self.transport.is_closing():
            # The peer went away while this connection sat idle: fail now, never wait for the deadline.
            waiter.set_exception(ConnectionError("connection closed while idle"))
            return waiter
        self._head_done, self._chunked, self._length, self._close_after = False, False, None, False
        self.received_any = False
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._buf += data
        try:
            self._parse()
        except ValueError as exc:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(ConnectionError(f"malformed HTTP response: {exc}"))
            self.close()

    def _parse(self) -> None:
        buf = self._buf
        if not self._head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ValueError("response head too large")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            line_end = head.find(b"\r\n")
            parts = (head if line_end < 0 else head[:line_end]).split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"bad status line {head[:80]!r}")
            self._status = int(parts[1])
            self._head = head
            low = head.lower()
            self._chunked = _header(low, b"transfer-encoding").find(b"chunked") >= 0
            self._close_after = _header(low, b"connection").strip() == b"close"
            length = _header(low, b"content-length")
            if not self._chunked and length:
                self._length = int(length)
            self._head_done = True
            self._body.clear()
        if self._length is not None:
            if len(buf) >= self._length:
                body = bytes(buf[: self._length])
                del buf[: self._length]
                self._finish(body)
        elif self._chunked:
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return
                del buf[: trailer_end + 4]
                self._finish(bytes(self._body))
                return
            if len(buf) < line_end + 2 + size + 2:
                return
            self._body += buf[line_end + 2 : line_end + 2 + size]
            del buf[: line_end + 2 + size + 2]

    def _finish(self, body: bytes) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Response(self._status, self._head, body))

    @property
    def keep_alive(self) -> bool:
        return not self.closed and not self._close_after

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The request's deadline passed: fail it and drop the connection (its state is unknown)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError("request deadline passed"))
        self.close()


def _header(low_head: bytes, name: bytes) -> bytes:
    """The value of header ``name`` in a lower-cased head block, b"" when absent."""
    at = low_head.find(b"\r\n" + name + b":")
    if at < 0:
        return b""
    start = at + len(name) + 3
    end = low_head.find(b"\r\n", start)
    return low_head[start : end if end >= 0 else len(low_head)].strip()


class HttpPool:
    """Persistent connections to one origin (scheme://host:port)."""

    def __init__(self, base_url: str, *, max_idle: int = 1024) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self._host_header = self.host if default_port else f"{self.host}:{self.port}"
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self._heads: dict[tuple[str, str, tuple[tuple[str, str], ...]], bytes] = {}

    def _head(self, method: str, path: str, headers: dict[str, str] | None) -> bytes:
        """The request head up to ``Content-Length: `` (built once per method, path and headers)."""
        key = (method, path, tuple(headers.items()) if headers else ())
        head = self._heads.get(key)
        if head is None:
            lines = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self._host_header}"]
            lines += [f"{k}: {v}" for k, v in key[2]]
            head = self._heads[key] = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        return head

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl)
        return conn

    async def request(self, method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None,
                      timeout: float = 300.0) -> Response:
        data = b"%s%d\r\n\r\n%s" % (self._head(method, path, headers), len(body), body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(2):
            while self._idle and self._idle[-1].closed:
                self._idle.pop()  # closed by the peer while idle
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await asyncio.wait_for(self._connect(), timeout)
            waiter = conn.send(data)
            timer = loop.call_at(deadline, conn.expire)
            try:
                resp = await waiter
            except ConnectionError:
                conn.close()
                if reused and not conn.received_any:
                    continue  # the server closed an idle keep-alive connection: retry once on a new one
                raise
            except BaseException:
                conn.close()  # timeout or cancellation: the connection's state is unknown
                raise
            finally:
                timer.cancel()
            if conn.keep_alive and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                conn.close()
            return resp
        raise ConnectionError("keep-alive connection closed twice")

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
