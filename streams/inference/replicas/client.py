"""HTTP client for one OpenAI-compatible replica (vLLM ``/v1/chat/completions``).

Maps outcomes onto the error tree: network errors, timeouts, 408/429/5xx and auth or model
misconfiguration (401/403/404: the replica, not the event, is wrong) are ``RetryableError``; other
4xx (e.g. prompt longer than the context) is ``PoisonError("request_rejected")``. Responses are read
tolerantly because servers add fields: ``message.reasoning`` falls back to
``message.reasoning_content`` (vLLM before PR #27752).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from streams.errors import ErrorType, PoisonError, RetryableError
from streams.inference.replicas.http import HttpPool

_RETRYABLE_4XX = {401, 403, 404, 408, 409, 425, 429}
_STRUCTURED = re.compile(r"response_format|json_schema|guided|structured output|grammar|structural tag", re.IGNORECASE)
# ("structural tag": vLLM 0.32 on a gpt-oss model, "Invalid structural tag specification.", seen on the engine)
log = logging.getLogger(__name__)


_WAITING, _RUNNING = "vllm:num_requests_waiting", "vllm:num_requests_running"


def root_url(base_url: str) -> str:
    """The server root (``/metrics``, ``/health``) of an OpenAI base URL such as ``http://host:8000/v1``."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def sum_samples(text: str, *names: str) -> dict[str, float]:
    """Prometheus text exposition -> {metric name: sum of its samples over all label sets}, for the
    ``names`` present (exact names, e.g. ``vllm:prefix_cache_hits_total``). Unparseable lines are skipped."""
    wanted = set(names)
    sums: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            try:
                sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return sums


@dataclass(frozen=True, slots=True)
class QueueState:
    """A replica's scheduler queue as its ``/metrics`` reports it."""

    waiting: float
    running: float | None


@dataclass(slots=True)
class ChatResult:
    """The parts of a chat completion that labels need."""

    content: str | None
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    replica: str
    latency_s: float


class ReplicaClient:
    """One replica. ``base_url`` is the OpenAI base, e.g. ``http://host:8000/v1``."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout_s: float):
        self.base_url = base_url.rstrip("/")
        self.root_url = root_url(self.base_url)
        self._http = HttpPool(self.base_url)
        self._root = HttpPool(self.root_url)
        self._timeout = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.supports_structured_output = True

    def __repr__(self) -> str:
        return f"ReplicaClient({self.base_url})"

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        """POST one chat completion. Raises RetryableError or PoisonError as described above."""
        if not self.supports_structured_output and "response_format" in body:
            body = {k: v for k, v in body.items() if k != "response_format"}
        started = time.monotonic()
        try:
            resp = await self._http.request("POST", "/chat/completions", orjson.dumps(body), headers=self._headers,
                                            timeout=self._timeout)
        except TimeoutError as exc:
            raise RetryableError(f"timeout after {self._timeout}s", replica=self.base_url) from exc
        except OSError as exc:  # ConnectionError, refused, unreachable, TLS
            raise RetryableError(f"{type(exc).__name__}: {exc}", replica=self.base_url) from exc
        status, raw = resp.status, resp.body
        if status != 200:
            retry_after = _retry_after(resp.headers.get("retry-after"))
            detail = _error_detail(raw)
            if status == 400 and "response_format" in body and _STRUCTURED.search(detail):
                # This server cannot constrain the answer (no guided decoding): the plain request,
                # from now on. Any other 400 (a prompt over the context length, say) is about this
                # request alone and must not switch structured output off for the next ones.
                log.warning("replica rejects response_format, sending plain requests from now on replica=%s "
                            "error=%s", self.base_url, detail)
                self.supports_structured_output = False
                return await self.chat(body)
            if status >= 500 or status in _RETRYABLE_4XX:
                raise RetryableError(f"HTTP {status}: {detail}", replica=self.base_url, retry_after=retry_after)
            raise PoisonError(ErrorType.REQUEST_REJECTED, f"replica rejected the request: HTTP {status}: {detail}")
        return self._parse(raw, time.monotonic() - started)

    def _parse(self, raw: bytes, latency: float) -> ChatResult:
        try:
            doc = orjson.loads(raw)
            choice = doc["choices"][0]
            message = choice.get("message") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # A 200 that is not a completion is a broken server, not a bad event.
            raise RetryableError(f"malformed response body: {raw[:200]!r}", replica=self.base_url) from exc
        usage = doc.get("usage") or {}
        reasoning = message.get("reasoning")
        if reasoning is None:
            reasoning = message.get("reasoning_content")
        return ChatResult(
            content=message.get("content"),
            reasoning=reasoning,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            replica=self.base_url,
            latency_s=latency,
        )

    async def health(self, timeout_s: float = 2.0) -> bool:
        """``GET /health`` at the server root: 200 means the engine is alive."""
        try:
            resp = await self._root.request("GET", "/health", timeout=timeout_s)
        except (TimeoutError, OSError):
            return False
        return resp.status == 200

    async def queue_state(self, timeout_s: float = 2.0) -> QueueState | None:
        """``vllm:num_requests_waiting`` and ``vllm:num_requests_running`` from ``GET /metrics``
        (each summed over engines); None without a waiting queue metric, ``running`` None if absent.

        Raises:
            RetryableError: the replica cannot be reached at all.
        """
        try:
            resp = await self._root.request("GET", "/metrics", timeout=timeout_s)
        except (TimeoutError, OSError) as exc:
            raise RetryableError(f"metrics scrape failed: {type(exc).__name__}: {exc}", replica=self.base_url) from exc
        if resp.status != 200:
            return None
        sums = sum_samples(resp.body.decode("utf-8", "replace"), _WAITING, _RUNNING)
        if _WAITING not in sums:
            return None
        return QueueState(sums[_WAITING], sums.get(_RUNNING))

    def close(self) -> None:
        self._http.close()
        self._root.close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_detail(raw: bytes) -> str:
    try:
        doc = orjson.loads(raw)
        if isinstance(doc, dict):
            err = doc.get("error", doc)
            if isinstance(err, dict):
                return str(err.get("message") or err)[:300]
            return str(err)[:300]
    except orjson.JSONDecodeError:
        pass
    return raw[:300].decode("utf-8", "replace")
