"""A pass-through in front of the real engine that keeps every chat completion it carried.

The consumer talks to the proxy exactly as it would to the engine (same paths, bodies, statuses and
the headers that matter), so a test can compare what the consumer wrote to Kafka with what the server
actually answered: the label's verdict against the answer's text, a dead letter's ``error_type``
against the answer's ``finish_reason``, the number of attempts against the requests made.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_FORWARDED = ("Content-Type", "Retry-After")


@dataclass(frozen=True)
class Exchange:
    """One chat completion as the engine saw and answered it."""

    request: dict[str, Any]
    status: int
    response: dict[str, Any]

    @property
    def system(self) -> str:
        return str(self.request["messages"][0]["content"])

    @property
    def user(self) -> str:
        return str(self.request["messages"][-1]["content"])

    @property
    def choice(self) -> dict[str, Any]:
        return dict(self.response["choices"][0])

    @property
    def content(self) -> str | None:
        return self.choice["message"].get("content")

    @property
    def finish_reason(self) -> str | None:
        return self.choice.get("finish_reason")


class RecordingProxy:
    """``with RecordingProxy(engine.base) as proxy``: ``proxy.url`` is an OpenAI base URL for the
    consumer; ``proxy.exchanges`` the chat completions carried so far, in the order they were answered."""

    def __init__(self, upstream: str, timeout_s: float = 900.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, timeout_s))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="recording-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def answered(self) -> list[Exchange]:
        """The exchanges the engine answered with 200."""
        with self._lock:
            return [x for x in self.exchanges if x.status == 200]

    def keep(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _document(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode("utf-8", "replace")}
    return doc if isinstance(doc, dict) else {"raw": doc}


def _handler(proxy: RecordingProxy, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the consumer's client expects of a server

        def do_GET(self) -> None:
            self._forward(None)

        def do_POST(self) -> None:
            self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        def _forward(self, body: bytes | None) -> None:
            request = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": self.headers.get("Content-Type") or
                                                      "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - loopback engine
                    status, headers, raw = answer.status, answer.headers, answer.read()
            except urllib.error.HTTPError as exc:
                status, headers, raw = exc.code, exc.headers, exc.read()
            except OSError:  # the engine is gone: the consumer sees what a dead server gives, a dropped connection
                self.close_connection = True
                return
            if self.command == "POST" and self.path.endswith("/chat/completions"):
                proxy.keep(Exchange(json.loads(body or b"{}"), status, _document(raw)))
            self.send_response(status)
            for name in _FORWARDED:
                if headers.get(name):
                    self.send_header(name, headers[name])
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return

    return Forward
