"""``safeguard coop callbacks``: Coop's action callbacks in, moderators' decisions out as review events.

Coop (roostorg/coop at 1c1f54da95c738ed6293997c73ab83541ba9a373, server/rule_engine/ActionPublisher.ts
and server/services/networkingService) POSTs a custom action's callback to the URL set on the action,
with the body ``{item: {id, typeId, typeName}, action: {id}, policies: [{id, name, penalty}], rules,
custom, actorEmail?, creator?, decisionReason?, ...}`` serialised with sorted keys, and the header
``coop-signature``: base64 of an RSASSA-PKCS1-v1_5 / SHA-256 signature of the body's exact bytes
with the organisation's private key. The public key is on Coop's settings page (PEM); it goes in
``integrations.coop.callback_secret`` (the PEM itself, or the path of a file holding it).

A callback whose signature does not verify (missing, not base64, wrong key, a body changed by one
byte) is answered 401 and nothing is produced. A verified one becomes a review event on
``integrations.coop.reviews_topic`` (keyed by the item id), answered 200 only once the broker has
acknowledged it; 503 if it cannot be, so nothing Coop was told is taken is lost (Coop sends a
callback once: its retries only cover errors thrown before an answer). The review id is derived from
the body: the same callback sent twice is the same review.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaError, Producer
from prometheus_client import CollectorRegistry, Counter

from streams.config import Settings
from streams.errors import ConfigError
from streams.kafka.config import producer_config
from streams.ops.logutil import RateLimitedLog
from streams.wire.catalogue import REVIEW
from streams.wire.codec import Encoder
from streams.wire.events import utc_now
from streams.wire.integrations import ReviewEvent, ReviewPolicy, review_id

log = logging.getLogger(__name__)

MAX_BODY = 64 << 10  # a callback over 64 KiB is refused (413): Coop's own are a few KiB
ACK_WAIT_S = 60.0  # how long a callback waits for the broker to acknowledge its review (librdkafka retries meanwhile)
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----(.+?)-----END PUBLIC KEY-----", re.DOTALL)


def load_verifier(value: str) -> Callable[[bytes, str | None], bool]:
    """A check of ``coop-signature`` against Coop's public key: ``value`` is the PEM (Coop shows it with
    its base64 on one line, which is read as is) or the path of a file holding it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    text = value
    if "-----BEGIN" not in text:
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("integrations.coop.callback_secret must be Coop's public key (PEM, from Coop's settings "
                              f"page) or the path of a file holding it; reading it as a path failed: {exc}") from exc
    match = _PEM.search(text)
    if match is None:
        raise ConfigError("integrations.coop.callback_secret holds no '-----BEGIN PUBLIC KEY-----' block (Coop's "
                          "public key, PEM)")
    try:
        key = load_der_public_key(base64.b64decode("".join(match.group(1).split()), validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"integrations.coop.callback_secret: not a readable public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError("integrations.coop.callback_secret: Coop signs with RSA; this key is not an RSA key")

    def verify(body: bytes, signature: str | None) -> bool:
        if not signature:
            return False
        try:
            raw = base64.b64decode(signature.strip(), validate=True)
            key.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True
    return verify


def review_event(body: bytes) -> ReviewEvent:
    """The review event of a verified callback. Raises ValueError on a body of the wrong shape."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("the body is not a JSON object")
    item, action, policies = doc.get("item"), doc.get("action"), doc.get("policies", [])
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise ValueError("item.id (a non-empty string) is missing")
    if not isinstance(action, dict) or not isinstance(action.get("id"), str) or not action["id"]:
        raise ValueError("action.id (a non-empty string) is missing")
    if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
        raise ValueError("policies must be a list of objects")
    named = []
    for p in policies:
        if not isinstance(p.get("id"), str) or not isinstance(p.get("name"), str):
            raise ValueError("each policy needs an id and a name (strings)")
        penalty = p.get("penalty")
        named.append(ReviewPolicy(id=p["id"], name=p["name"], penalty=None if penalty is None else str(penalty)))
    actor = doc.get("actorEmail")
    return ReviewEvent(review_id=review_id(body), event_id=item["id"], action=action["id"], policies=named,
                       actor=actor if isinstance(actor, str) else None, decided_at=utc_now())


class CallbackServer:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        coop = settings.integrations.coop
        if coop.callback_secret is None:
            raise ConfigError("safeguard coop callbacks needs integrations.coop.callback_secret: Coop's public key "
                              "(PEM, or a file path), set with SAFEGUARD_INTEGRATIONS__COOP__CALLBACK_SECRET; "
                              "unsigned callbacks are never accepted")
        self._verify = load_verifier(coop.callback_secret.get_secret_value())
        self._topic = REVIEW.topic(settings)
        self.encoder = Encoder(settings.output, settings.schema_registry)
        self._producer = Producer(producer_config(settings.kafka))
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="reviews-producer")
        self._closing = threading.Event()
        self._refused = RateLimitedLog(log, 10.0)
        self.callbacks = Counter("safeguard_coop_callbacks", "Coop action callbacks by outcome (accepted, "
                                 "unauthorized, invalid, unavailable)", ["outcome"], registry=registry)
        for outcome in ("accepted", "unauthorized", "invalid", "unavailable"):
            self.callbacks.labels(outcome)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._verify(body, request.headers.get("coop-signature")):
            self.callbacks.labels("unauthorized").inc()
            self._refused.log(logging.WARNING, "unauthorized", "callback refused (401): coop-signature %s from %s",
                              "missing" if "coop-signature" not in request.headers else "does not verify",
                              request.remote)
            return web.json_response({"error": "coop-signature does not verify against Coop's public key"},
                                     status=401)
        try:
            review = review_event(body)
        except ValueError as exc:
            self.callbacks.labels("invalid").inc()
            log.warning("signed callback of an unknown shape refused (400): %s", exc)
            return web.json_response({"error": str(exc)}, status=400)
        error = await self._produce(review)
        if error is not None:
            self.callbacks.labels("unavailable").inc()
            log.error("review %s of item %s not written to %s (503: Coop may send it again): %s", review.review_id,
                      review.event_id, self._topic, error)
            return web.json_response({"error": "the review could not be stored; try again"}, status=503)
        self.callbacks.labels("accepted").inc()
        log.info("review %s item=%s action=%s policies=%s", review.review_id, review.event_id, review.action,
                 ",".join(p.id for p in review.policies) or "-")
        return web.json_response({"review_id": review.review_id})

    async def _produce(self, review: ReviewEvent) -> str | None:
        """Write the review and wait for the broker's acknowledgement of it (a delivery report, served
        by the polling thread); the error, or None."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[KafkaError | None] = loop.create_future()

        def settle(err: KafkaError | None) -> None:
            if not done.done():
                done.set_result(err)

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(settle, err)

        try:
            value = self.encoder.encode(review, REVIEW.schema, self._topic)
            self._producer.produce(self._topic, value, review.event_id.encode(), on_delivery=delivered)
        except Exception as exc:  # noqa: BLE001 - a full local queue, a registry outage: the caller answers 503
            return f"{type(exc).__name__}: {exc}"
        try:
            err = await asyncio.wait_for(done, ACK_WAIT_S)
        except TimeoutError:
            return f"not acknowledged within {ACK_WAIT_S:.0f} s"
        return None if err is None else str(err)

    def poll_forever(self) -> None:
        """The producer's delivery reports, on a thread of their own until :meth:`close`."""
        while not self._closing.is_set():
            self._producer.poll(0.1)

    def close(self) -> None:
        self._closing.set()
        self._producer.flush(10)
        self.executor.shutdown(wait=False)


async def run_callbacks(settings: Settings, *, port: int = 8080, host: str = "0.0.0.0",  # noqa: S104
                        registry: CollectorRegistry | None = None) -> None:
    """Serve Coop's callbacks on ``port`` (0: a free one) until SIGTERM/SIGINT; prints ``{"port": P}``
    on stdout once listening."""
    from streams.app import register_output_schemas
    from streams.kafka.admin import require_topics
    from streams.ops.service import serving

    loop = asyncio.get_running_loop()
    registry = registry or CollectorRegistry()
    server = CallbackServer(settings, registry)
    await loop.run_in_executor(None, lambda: require_topics(settings.kafka, [REVIEW.topic(settings)]))
    await loop.run_in_executor(None, lambda: register_output_schemas(settings, server.encoder, writer="callbacks"))
    stop = asyncio.Event()
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    polling = loop.run_in_executor(server.executor, server.poll_forever)
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        sys.stdout.write(orjson.dumps({"port": bound}).decode() + "\n")
        sys.stdout.flush()
        log.info("coop callbacks listening port=%d reviews_topic=%s", bound, REVIEW.topic(settings))
        async with serving(stop.set, port=settings.metrics.port, registry=registry, ready=lambda: True):
            await stop.wait()
    finally:
        await runner.cleanup()
        server.close()
        await polling
