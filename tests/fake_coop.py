"""A fake Coop for tests: validates every request the way Coop does, and signs callbacks the way Coop does.

Written from roostorg/coop at 1c1f54da95c738ed6293997c73ab83541ba9a373:

- ``server/api.ts``: the body schema is checked before the API key (a bad body with a bad key is a
  400); ``express.json({limit: '50mb'})``; errors are ``{errors: [{status, type, title, pointer?,
  detail?}]}``; unknown routes 404.
- ``server/utils/bodySchemaValidation.ts``: draft-04 schemas (ajv-draft-04, ``allErrors``); the
  schemas below are copied from ``server/routes/reporting/ReportingRoutes.ts``,
  ``server/routes/items/ItemRoutes.ts`` and ``server/services/itemProcessingService/types.ts``.
- ``server/routes/reporting/submitReport.ts``: ``reportedAt`` must make a valid ``Date``; item types must
  be the org's (``DataInvalidForItemType``); answers 201 ``{reportId}``.
- ``server/routes/items/submitItems.ts``: 202, empty body.
- ``server/utils/apiKeyMiddleware.ts``: ``x-api-key`` checked, 401 ``Invalid API Key``.
- ``server/services/networkingService``, ``signingKeyPairService``: callbacks are signed with
  RSASSA-PKCS1-v1_5 / SHA-256 over the body's bytes, base64 in ``coop-signature``; the body is
  serialised with sorted keys (safe-stable-stringify); the public key is shown as PEM with its
  base64 on one line.

Anything the fake does not expect (another route, a method, a malformed body) is recorded in
``violations`` as well as answered as Coop would, so a test can fail on it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jsonschema import Draft4Validator

RAW_ITEM_SUBMISSION = {"oneOf": [
    {"type": "object", "properties": {"id": {"type": "string"}, "data": {"type": "object"},
                                      "typeId": {"type": "string"}, "typeVersion": {"type": "string"},
                                      "typeSchemaVariant": {"type": "string", "enum": ["original", "partial"]}},
     "required": ["id", "data", "typeId"]},
    {"type": "object", "properties": {"id": {"type": "string"}, "data": {"type": "object"},
                                      "type": {"type": "object", "properties": {
                                          "id": {"type": ["string"]}, "version": {"type": ["string"]},
                                          "schemaVariant": {"type": ["string"], "enum": ["original", "partial"]}},
                                          "required": ["id"]}},
     "required": ["id", "data", "type"]},
]}
REPORT_SCHEMA = {
    "title": "ReportContentInputModel", "type": "object",
    "properties": {
        "reporter": {"type": "object", "properties": {"kind": {"type": "string", "enum": ["user"]},
                                                      "typeId": {"type": "string"}, "id": {"type": "string"}},
                     "required": ["kind", "typeId", "id"]},
        "reportedAt": {"type": "string"},
        "reportedForReason": {"type": "object", "properties": {"policyId": {"type": ["string", "null"]},
                                                               "reason": {"type": ["string", "null"]},
                                                               "csam": {"type": ["boolean", "null"]}}},
        "reportedItem": RAW_ITEM_SUBMISSION,
        "reportedItemThread": {"type": "array", "items": RAW_ITEM_SUBMISSION},
        "reportedItemsInThread": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}, "typeId": {"type": "string"}}, "required": ["id", "typeId"]}},
        "additionalItems": {"type": "array", "items": RAW_ITEM_SUBMISSION},
    },
    "required": ["reporter", "reportedAt", "reportedItem"],
}
ITEMS_SCHEMA = {"title": "SubmitItemsInputModel", "type": "object",
                "properties": {"items": {"type": "array", "items": RAW_ITEM_SUBMISSION}}, "required": ["items"]}
_REPORT = Draft4Validator(REPORT_SCHEMA)
_ITEMS = Draft4Validator(ITEMS_SCHEMA)


def _error(status: int, kind: str, title: str, **extra: Any) -> web.Response:
    return web.json_response({"errors": [{"status": status, "type": [kind], "title": title, **extra}]}, status=status)


def stable_json(doc: Any) -> bytes:
    """safe-stable-stringify: keys sorted, no spaces."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class FakeCoop:
    api_key: str = "coop-test-key"
    item_types: frozenset[str] = frozenset({"content-type"})
    user_types: frozenset[str] = frozenset({"service-user"})
    reports: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)  # (path, status) -> count
    # failure programmes, consumed by the handlers
    outage_after_reports: int | None = None  # once this many reports are accepted: 503 until `outage = False`
    outage: bool = False
    storm: int = 0  # answer this many requests 429 (with Retry-After: storm_retry_after)
    storm_retry_after: str = "0.2"
    reject_text: str | None = None  # a report or item whose text contains this is refused for its data (400)
    retries_in_outage: int = 0

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- the signing side -------------------------------------------------------------------------

    @property
    def public_pem(self) -> str:
        """As Coop's settings page shows it: one base64 line between the markers."""
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"-----BEGIN PUBLIC KEY-----\n{base64.b64encode(der).decode()}\n-----END PUBLIC KEY-----"

    def sign(self, body: bytes, key: rsa.RSAPrivateKey | None = None) -> str:
        signature = (key or self._key).sign(body, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()

    @staticmethod
    def callback_body(item_id: str, *, action: str = "act-remove", policies: list[tuple[str, str]] = (),
                      actor: str | None = "mod@example.com") -> bytes:
        """A custom action's callback as ActionPublisher.ts builds it (undefined fields left out)."""
        doc: dict[str, Any] = {"item": {"id": item_id, "typeId": "content-type", "typeName": "Content"},
                               "policies": [{"id": pid, "name": name, "penalty": "MEDIUM"} for pid, name in policies],
                               "rules": [], "action": {"id": action}, "custom": {}}
        if actor is not None:
            doc["actorEmail"] = actor
        return stable_json(doc)

    # ---- the server --------------------------------------------------------------------------------

    def start(self) -> FakeCoop:
        ready = threading.Event()

        def serve() -> None:
            self._loop = loop = asyncio.new_event_loop()
            app = web.Application(client_max_size=50 * 1024 * 1024)
            app.router.add_post("/api/v1/report", self._report)
            app.router.add_post("/api/v1/items/async/", self._items)
            app.router.add_post("/api/v1/items/async", self._items)
            app.router.add_route("*", "/{tail:.*}", self._unknown)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())

        self._thread = threading.Thread(target=serve, daemon=True, name="fake-coop")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def counts(self) -> Counter:
        """Accepted reports per reported item id."""
        with self._lock:
            return Counter(r["reportedItem"]["id"] for r in self.reports)

    async def _body(self, request: web.Request, validator: Draft4Validator) -> tuple[Any, web.Response | None]:
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            self.violations.append(f"{request.path}: body is not JSON: {raw[:200]!r}")
            return None, _error(500, "/errors/internal-server-error", "Unknown error")
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        if errors:
            pointer = "/" + "/".join(str(p) for p in errors[0].absolute_path)
            detail = "; ".join(f"/{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors)
            self.violations.append(f"{request.path}: schema: {detail}")
            return None, _error(400, "/errors/invalid-user-input", "Request body failed schema validation.",
                                pointer=pointer, detail=detail)
        if request.headers.get("x-api-key") != self.api_key:
            self.violations.append(f"{request.path}: wrong or missing x-api-key")
            return None, _error(401, "/errors/authentication-failed-or-missing", "Invalid API Key")
        return doc, None

    def _programmed(self) -> web.Response | None:
        with self._lock:
            if self.storm > 0:
                self.storm -= 1
                return web.json_response({"errors": [{"status": 429, "title": "Too many requests"}]}, status=429,
                                         headers={"Retry-After": self.storm_retry_after})
            if self.outage:
                self.retries_in_outage += 1
                return web.Response(status=503, text="upstream unavailable")
        return None

    def _item_problem(self, item: dict[str, Any], pointer: str) -> web.Response | None:
        type_id = item.get("typeId") or item.get("type", {}).get("id")
        if type_id not in self.item_types:
            self.violations.append(f"{pointer}: unknown item type {type_id!r}")
            return _error(400, "/errors/data-invalid-for-item-type",
                          f"We could not find an Item Type created by your organization with ID: {type_id}",
                          pointer=pointer)
        if self.reject_text is not None and self.reject_text in json.dumps(item.get("data"), ensure_ascii=False):
            return _error(400, "/errors/data-invalid-for-item-type", "Data invalid for item type", pointer=pointer,
                          detail="the field 'text' is too long for this item type")
        return None

    async def _report(self, request: web.Request) -> web.Response:
        response = await self._handle_report(request)
        with self._lock:
            self.requests[(request.path, response.status)] += 1
        return response

    async def _handle_report(self, request: web.Request) -> web.Response:
        doc, error = await self._body(request, _REPORT)
        if error is not None:
            return error
        programmed = self._programmed()
        if programmed is not None:
            return programmed
        try:
            if datetime.fromisoformat(doc["reportedAt"].replace("Z", "+00:00")) is None:
                raise ValueError
        except ValueError:
            self.violations.append(f"reportedAt {doc['reportedAt']!r} is not a date")
            return _error(400, "/errors/invalid-user-input", "Invalid reportedAt time")
        if doc["reporter"]["typeId"] not in self.user_types:
            self.violations.append(f"reporter type {doc['reporter']['typeId']!r} unknown")
            return _error(400, "/errors/data-invalid-for-item-type", "unknown reporter type")
        for i, item in enumerate([doc["reportedItem"], *doc.get("reportedItemThread", [])]):
            problem = self._item_problem(item, "/reportedItem" if i == 0 else f"/reportedItemThread/{i - 1}")
            if problem is not None:
                return problem
        with self._lock:
            self.reports.append(doc)
            if self.outage_after_reports is not None and len(self.reports) >= self.outage_after_reports:
                self.outage, self.outage_after_reports = True, None
        return web.json_response({"reportId": str(uuid.uuid1())}, status=201)

    async def _items(self, request: web.Request) -> web.Response:
        doc, error = await self._body(request, _ITEMS)
        if error is None:
            error = self._programmed()
        if error is None:
            problems = [p for i, item in enumerate(doc["items"]) if (p := self._item_problem(item, f"/items/{i}"))]
            if problems:
                error = problems[0]
            else:
                with self._lock:
                    self.items.extend(doc["items"])
                error = web.Response(status=202)
        with self._lock:
            self.requests[(request.path, error.status)] += 1
        return error

    async def _unknown(self, request: web.Request) -> web.Response:
        self.violations.append(f"unexpected {request.method} {request.path}")
        return _error(404, "/errors/not-found", "Requested route not found.")


async def post_callback(url: str, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
    """POST a callback as Coop does: Content-Type json, then coop-signature (when signed)."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["coop-signature"] = signature
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, {"text": text}
