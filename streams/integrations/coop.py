"""Coop out: decisions as Coop reports, items with our labels, over Coop's REST API.

Formats from roostorg/coop at 1c1f54da95c738ed6293997c73ab83541ba9a373 (docs/integrations.md cites
each): ``POST /api/v1/report`` takes ``{reporter: {kind: "user", typeId, id}, reportedAt,
reportedForReason: {policyId?, reason?, csam?}, reportedItem: {id, typeId, data},
reportedItemThread?: [items]}`` and answers 201 ``{reportId}``
(server/routes/reporting/ReportingRoutes.ts, submitReport.ts); ``POST /api/v1/items/async/`` takes
``{items: [{id, typeId, data}]}`` and answers 202 (server/routes/items/ItemRoutes.ts). The key goes
in ``X-API-KEY``; errors are ``{errors: [{status, type, title, pointer?, detail?}]}``.

Two halves, joined by a topic (``integrations.coop.outbox_topic``): the reasoning consumer writes
each request there with the event's other records (:class:`CoopRequests`, under the labels'
delivery guarantee), and ``safeguard coop reports`` sends them (:mod:`streams.integrations.coop_sender`),
so a Coop outage holds the sender, never the labels.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from streams.config import CoopSettings
from streams.engine.work import Work

log = logging.getLogger(__name__)

REASON_LIMIT = 4000  # characters of reportedForReason.reason (the rationales are cut to fit)
REPORT_PATH = "/api/v1/report"
ITEMS_PATH = "/api/v1/items/async/"


class CoopRequests:
    """Builds the Coop requests an event's records imply (the consumer's side)."""

    def __init__(self, settings: CoopSettings) -> None:
        assert settings.url is not None and settings.item_type_id is not None and settings.reporter.type_id is not None
        self.topic = settings.outbox_topic
        self._actions = set(settings.report_actions)
        self._submit = settings.submit_items
        self._type = settings.item_type_id
        self._reporter = {"kind": "user", "typeId": settings.reporter.type_id, "id": settings.reporter.id}

    def build(self, work: Work, labels: Sequence[Mapping[str, Any]], decision: Mapping[str, Any] | None
              ) -> list[tuple[bytes, bytes]]:
        """(key, value) of the item (``submit_items``) and of the report (a final decision whose
        action is reported). The key is the request's own id: a request written twice (at-least-once
        after a crash) lands in the same partition, where the sender knows it."""
        event = work.event
        assert event is not None
        out = []
        data = _item_data(work, labels)
        if self._submit:
            item = {"id": event.event_id, "typeId": self._type, "data": data}
            out.append(_request("item", event.event_id, event.event_id, item))
        if decision is not None and decision["action"] in self._actions:
            report: dict[str, Any] = {
                "reporter": self._reporter,
                "reportedAt": decision["decided_at"],
                "reportedForReason": {"policyId": None, "reason": _reason(decision, labels)},
                "reportedItem": {"id": event.event_id, "typeId": self._type, "data": data},
            }
            if event.messages:  # a chat: its turns are the thread the reported item sits in
                report["reportedItemThread"] = [
                    {"id": f"{event.event_id}/{i}", "typeId": self._type,
                     "data": {"text": m.content, "role": m.role, "kind": "chat"}}
                    for i, m in enumerate(event.messages)]
            out.append(_request("report", decision["decision_id"], event.event_id, report))
        return out


def _request(kind: str, ident: str, event_id: str, body: dict[str, Any]) -> tuple[bytes, bytes]:
    return f"{kind}/{ident}".encode(), orjson.dumps({"kind": kind, "id": ident, "event_id": event_id, "body": body})


def _item_data(work: Work, labels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    event = work.event
    assert event is not None
    text = event.text if event.text is not None else "\n".join(f"{m.role}: {m.content}" for m in event.messages or [])
    return {"text": text, "kind": event.kind, "metadata": dict(event.metadata or {}),
            "labels": [{"policy_id": lab["policy_id"], "policy_version": lab["policy_version"],
                        "violation": lab["violation"], "category": lab["category"], "confidence": lab["confidence"],
                        "rationale": lab["rationale"], "label_id": lab["label_id"]} for lab in labels]}


def _reason(decision: Mapping[str, Any], labels: Sequence[Mapping[str, Any]]) -> str:
    """The policies that decided and the model's rationale for each, within REASON_LIMIT."""
    rationale = {lab["policy_id"]: lab.get("rationale") or "" for lab in labels}
    rule = f" (rule {decision['rule']})" if decision.get("rule") is not None else ""
    head = f"safeguard decided {decision['action']}{rule}."
    parts = []
    for r in decision["reasons"]:
        if r["decided_by"] == "dead_letter":
            parts.append(f"{r['policy_id']} {r['policy_version']}: not decided (dead-lettered)")
            continue
        verdict = "violation" if r["violation"] else "no violation"
        extra = ", ".join(x for x in (r.get("category"), r.get("confidence")) if x)
        parts.append(f"{r['policy_id']} {r['policy_version']}: {verdict}{f' ({extra})' if extra else ''}: "
                     f"{rationale.get(r['policy_id'], '')}".rstrip(": "))
    reason = " ".join([head, *parts])
    return reason if len(reason) <= REASON_LIMIT else reason[: REASON_LIMIT - 1] + "…"


# ---- the HTTP client (the sender's side) ------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: str  # Coop's answer, cut to 2,000 characters (kept in a dead letter)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# Answers that say nothing about the request: Coop is busy or down (408, 429, 5xx), or our side is
# misconfigured (401/403: the API key; 3xx, 404, 405: the URL, as redirects are not followed, so the key
# never goes to another host). Retried for as long as it takes, never dead-lettered: a revoked key or a
# wrong URL must not dead-letter the whole backlog.
RETRIED = frozenset({401, 403, 404, 405, 408, 429})
CONFIGURATION = {401: "check SAFEGUARD_INTEGRATIONS__COOP__API_KEY", 403: "check SAFEGUARD_INTEGRATIONS__COOP__API_KEY",
                 404: "check integrations.coop.url (Coop's base URL, without /api/v1)",
                 405: "check integrations.coop.url (Coop's base URL, without /api/v1)"}


def retryable(status: int) -> bool:
    """An answer to send the request again for (RETRIED, any 3xx or 5xx)."""
    return status in RETRIED or 300 <= status < 400 or status >= 500


def retry_after(value: str | None, cap_s: float, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), cap_s)


class Backoff:
    """Exponential backoff with jitter: 0.5 s doubling up to ``cap_s``."""

    def __init__(self, cap_s: float = 30.0, base_s: float = 0.5) -> None:
        self._cap, self._base, self.attempt = cap_s, base_s, 0

    def next(self) -> float:
        delay = min(self._cap, self._base * 2 ** self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not security

    def reset(self) -> None:
        self.attempt = 0


class CoopClient:
    """POSTs to Coop with the API key; :meth:`send` retries until Coop answers something final."""

    def __init__(self, settings: CoopSettings, *, stopping: asyncio.Event | None = None,
                 on_retry: Callable[[], None] | None = None) -> None:
        assert settings.url is not None and settings.api_key is not None
        self._url = settings.url
        self._on_retry = on_retry
        host = urlsplit(settings.url).hostname or ""
        if settings.url.startswith("http://") and host not in ("localhost", "127.0.0.1", "::1"):
            log.warning("integrations.coop.url is http://%s: the API key travels unencrypted; use https", host)
        self._headers = {"X-API-KEY": settings.api_key.get_secret_value(), "Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._cap = settings.max_retry_after_s
        self._stopping = stopping or asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._retry_after: str | None = None
        self.waiting_since: float | None = None  # monotonic: Coop has not taken a request since then
        self.retries = 0

    async def __aenter__(self) -> CoopClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, path: str, body: bytes) -> Answer:
        """One attempt. A connection error or timeout is answered as status 0."""
        assert self._session is not None
        try:
            async with self._session.post(self._url + path, data=body, headers=self._headers,
                                          allow_redirects=False) as resp:
                text = (await resp.text(errors="replace"))[:2000]
                self._retry_after = resp.headers.get("Retry-After")
                return Answer(resp.status, text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._retry_after = None
            return Answer(0, f"{type(exc).__name__}: {exc}"[:2000])

    async def send(self, path: str, body: bytes, what: str) -> Answer | None:
        """Send until Coop takes it (2xx) or refuses it for good (a 4xx not retried): the answer. None
        when stopping first (the request is not done: it is sent again after the restart)."""
        backoff = Backoff(cap_s=min(30.0, self._cap))
        while True:
            answer = await self.post(path, body)
            if answer.ok or not (answer.status == 0 or retryable(answer.status)):
                if self.waiting_since is not None:
                    log.info("Coop takes requests again after %.0f s (%d retries)",
                             time.monotonic() - self.waiting_since, self.retries)
                self.waiting_since, self.retries = None, 0
                return answer
            delay = retry_after(self._retry_after, self._cap)
            delay = backoff.next() if delay is None else delay
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            self.retries += 1
            if self._on_retry is not None:
                self._on_retry()
            hint = CONFIGURATION.get(answer.status, "check integrations.coop.url" if 300 <= answer.status < 400
                                     else "")
            hint = f" ({hint})" if hint else ""
            log.warning("Coop did not take %s: %s%s; retrying in %.1f s (waiting for %.0f s; nothing is skipped or "
                        "committed meanwhile)", what, answer.status or answer.body, hint, delay,
                        time.monotonic() - self.waiting_since)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                continue
            return None
