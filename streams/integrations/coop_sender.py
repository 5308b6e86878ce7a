"""``safeguard coop reports``: sends to Coop the requests the reasoning consumer wrote.

It reads ``integrations.coop.outbox_topic`` (group ``<group_id>-coop``, ``read_committed``: under
exactly-once only committed requests) in order, one partition's records one after the other:

- a report is ``POST /api/v1/report``; consecutive items of a partition go together in one
  ``POST /api/v1/items/async/`` (up to ``ITEMS_PER_POST``);
- 2xx: done; 429, 5xx, 401/403 (a key Coop refuses) or no answer: wait (a capped ``Retry-After``, or
  backoff) and send again, for as long as it takes: nothing after it is sent or committed meanwhile,
  so the group lags and nothing is lost; any other 4xx: a dead letter ``integration_rejected`` with
  Coop's answer (a batch of items is split first, so only the item Coop refuses is dead-lettered);
- once a record is done its offset is committed synchronously, before the next request.

**What is guaranteed.** Every request is sent until Coop takes or refuses it (nothing lost; dead
letters are acknowledged before their offsets are committed). A request is sent once, except that
the one under way is sent again after a crash between Coop's answer and the commit that follows
it, after an answer lost on the way (Coop created the report, the sender saw a timeout or a 502),
or when its partition moved to another member before the commit (at-least-once, one request). A
request the consumer wrote twice (at-least-once delivery after a crash: same key, so the same
partition, same id) is sent once: the ids of each partition's last requests are remembered, and read
back from below the committed offset when a partition is assigned, so a restart or a rebalance
remembers them too (:mod:`streams.integrations.coop_seen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from streams.config import Settings
from streams.errors import ConfigError, ErrorType
from streams.integrations.coop import ITEMS_PATH, REPORT_PATH, Answer, CoopClient
from streams.integrations.coop_seen import Seen, read_back, seen_id
from streams.kafka.config import consumer_config, producer_config
from streams.wire.catalogue import DEAD_LETTER, output_topics
from streams.wire.codec import Encoder
from streams.wire.events import Source, dead_letter_for
from streams.wire.integrations import CoopRequest

log = logging.getLogger(__name__)

ITEMS_PER_POST = 100


@dataclass
class Pending:
    msg: Message
    request: CoopRequest | None  # None: not a request (dead-lettered)
    error: str = ""


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("safeguard_coop_requests", "Coop requests by kind and outcome (sent, rejected: "
                                "dead-lettered, duplicate: written twice and sent once)", ["kind", "outcome"],
                                registry=registry)
        self.retries = Counter("safeguard_coop_retries", "Coop answers that were retried (429, 5xx, no answer)",
                               registry=registry)
        self.waiting = Gauge("safeguard_coop_waiting_seconds", "How long Coop has not taken a request (0: it does)",
                             registry=registry)
        self.ready = Gauge("safeguard_ready", "1 while the sender runs (Coop up or down: see "
                           "safeguard_coop_waiting_seconds)", registry=registry)


class CoopSender:
    def __init__(self, settings: Settings, metrics: SenderMetrics, *,
                 consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer) -> None:
        coop = settings.integrations.coop
        if coop.url is None:
            raise ConfigError("safeguard coop reports needs integrations.coop.url (with api_key, item_type_id and "
                              "reporter.type_id): where to send the reports")
        self._settings = settings
        self._topic = coop.outbox_topic
        self._group = f"{settings.kafka.group_id}-coop"
        self._metrics = metrics
        self._seen = Seen()
        self._stopping = asyncio.Event()
        if coop.api_key is None:
            raise ConfigError("safeguard coop reports needs integrations.coop.api_key: Coop's API key, set with "
                              "SAFEGUARD_INTEGRATIONS__COOP__API_KEY")
        self._client = CoopClient(coop, stopping=self._stopping, on_retry=metrics.retries.inc)
        self.encoder = Encoder(settings.output, settings.schema_registry)
        self._dlq = DEAD_LETTER.topic(settings)
        self._consumer_factory = consumer_factory
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="coop-consumer")
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.assigned: set[int] = set()
        self._letters: list[tuple[bytes, bytes | None]] = []
        self._running = False
        self.done = 0  # records done (sent, rejected, duplicates, dead letters)

    @property
    def ready(self) -> bool:
        """Running (subscribed). Not tied to Coop: a pod that waits for Coop is still the pod to keep
        (a rollout must be able to replace it; ``safeguard_coop_waiting_seconds`` says Coop is down)."""
        return self._running

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, until_idle: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        conf = consumer_config(self._settings.kafka) | {
            "group.id": self._group, "isolation.level": "read_committed",
            # a Coop outage holds the loop in one record: the member must stay in the group meanwhile
            # (liveness is the session's heartbeat). Past a day it leaves, rejoins, and goes on from its commit.
            "max.poll.interval.ms": 86_400_000, "statistics.interval.ms": 0}
        self._consumer = consumer = self._consumer_factory(conf)
        self._producer = Producer(producer_config(self._settings.kafka))
        consumer.subscribe([self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        log.info("coop sender started topic=%s group=%s coop=%s", self._topic, self._group,
                 _safe_url(self._settings.integrations.coop.url or ""))
        self._metrics.waiting.set_function(lambda: time.monotonic() - self._client.waiting_since
                                           if self._client.waiting_since is not None else 0.0)
        self._running = True
        last_input = time.monotonic()
        try:
            async with self._client:
                while not self._stopping.is_set():
                    msgs = await loop.run_in_executor(self._executor, consumer.consume, 500, 0.5)
                    msgs = [m for m in msgs if m.error() is None]
                    if msgs:
                        last_input = time.monotonic()
                        if not await self._handle([self._parse(m) for m in msgs]):
                            break
                    elif (until_idle is not None and self.assigned
                          and time.monotonic() - last_input >= until_idle):
                        log.info("idle for %.1fs: exiting", until_idle)
                        break
        finally:
            self._running = False
            await loop.run_in_executor(self._executor, consumer.close)
            self._executor.shutdown(wait=False)
            log.info("coop sender closed done=%d", self.done)

    # ---- one poll's records, in order ------------------------------------------------------------

    async def _handle(self, pending: list[Pending]) -> bool:
        """Send and commit each record in turn. False when stopping in the middle (the rest is read
        again after the restart). A partition that is no longer ours (a rebalance: its commit was
        refused) is left at once: its new owner reads it from the last commit."""
        gone: set[int] = set()
        i = 0
        while i < len(pending):
            run = _run(pending, i)
            i += len(run)
            partition = _partition(run[0].msg)
            if partition in gone:
                continue
            if not self._owned(run[0].msg):
                gone.add(partition)
                continue
            if not await self._send(run) or not await self._flush():
                return False
            if not await self._commit(run[-1].msg):
                if self._stopping.is_set():
                    return False
                gone.add(partition)
                self._rewind(run[-1].msg)
        return True

    def _owned(self, msg: Message) -> bool:
        assert self._consumer is not None
        try:
            return any(tp.topic == msg.topic() and tp.partition == msg.partition()
                       for tp in self._consumer.assignment())
        except KafkaException:
            return False

    def _rewind(self, msg: Message) -> None:
        """A commit the group refused, for a partition we may still own: read it again from after this
        record (it was sent), or its new owner reads it from the last commit."""
        assert self._consumer is not None
        with contextlib.suppress(KafkaException):
            self._consumer.seek(TopicPartition(str(msg.topic()), _partition(msg), int(msg.offset() or 0) + 1))

    def _parse(self, msg: Message) -> Pending:
        try:
            return Pending(msg, CoopRequest.model_validate_json(msg.value() or b""))
        except ValidationError as exc:
            return Pending(msg, None, f"not a Coop request: {exc.errors(include_url=False)[0]['msg']}")

    async def _send(self, pending: list[Pending]) -> bool:
        todo: list[Pending] = []
        for p in pending:
            if p.request is None:
                self._dead_letter(p, ErrorType.SCHEMA_VIOLATION, p.error)
            elif (_partition(p.msg), seen_id(p.request)) in self._seen:
                self._metrics.requests.labels(p.request.kind, "duplicate").inc()
                log.info("coop %s %s written twice (a consumer restart): sent once", p.request.kind, p.request.id)
            else:
                todo.append(p)
        if not todo:
            return True
        first = todo[0].request
        assert first is not None
        if first.kind == "report":  # a run of reports is one report (see _run)
            answer = await self._client.send(REPORT_PATH, orjson.dumps(first.body), f"report {first.id}")
            if answer is None:
                return False
            self._answered(todo[0], answer)
            return True
        body = orjson.dumps({"items": [p.request.body for p in todo if p.request is not None]})
        answer = await self._client.send(ITEMS_PATH, body, f"{len(todo)} items")
        if answer is None:
            return False
        if answer.ok or len(todo) == 1:
            for p in todo:
                self._answered(p, answer)
            return True
        for p in todo:  # Coop refuses the whole batch for one bad item: find it
            if not await self._send([p]):
                return False
        return True

    def _answered(self, p: Pending, answer: Answer) -> None:
        request = p.request
        assert request is not None
        self.done += 1
        self._seen.add(_partition(p.msg), seen_id(request))
        if answer.ok:
            self._metrics.requests.labels(request.kind, "sent").inc()
            return
        self._metrics.requests.labels(request.kind, "rejected").inc()
        self._dead_letter(p, ErrorType.INTEGRATION_REJECTED,
                          f"Coop answered {answer.status} to {request.kind} {request.id}: {answer.body}")

    def _dead_letter(self, p: Pending, error_type: ErrorType, error: str) -> None:
        msg = p.msg
        log.warning("dead letter (coop) topic=%s partition=%s offset=%s error_type=%s error=%s", msg.topic(),
                    msg.partition(), msg.offset(), error_type, error[:500])
        letter = dead_letter_for(source=Source(topic=str(msg.topic()), partition=_partition(msg),
                                               offset=int(msg.offset() or 0)),
                                 key=msg.key(), value=msg.value(), error_type=error_type, error=error,
                                 event_id=p.request.event_id if p.request is not None else None)
        self._letters.append((self.encoder.encode(letter, DEAD_LETTER.schema, self._dlq), msg.key()))
        self.done += p.request is None

    async def _flush(self) -> bool:
        """Produce the dead letters of the records just handled and wait until the broker has
        acknowledged every one (one that fails is produced again), before their offsets are
        committed. False when stopping first."""
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        while self._letters:
            failed: list[tuple[bytes, bytes | None]] = []
            for value, key in self._letters:
                def delivered(err: KafkaError | None, _msg: Any, value: bytes = value, key: bytes | None = key,
                              failed: list[tuple[bytes, bytes | None]] = failed) -> None:
                    if err is not None:
                        failed.append((value, key))
                self._producer.produce(self._dlq, value, key, on_delivery=delivered)
            self._letters = []
            while await loop.run_in_executor(self._executor, self._producer.flush, 5.0) > 0:
                if self._stopping.is_set():
                    return False
                log.warning("dead letters not acknowledged yet (is the broker reachable?); waiting")
            if failed:
                log.warning("%d dead letters not delivered; producing them again", len(failed))
                self._letters = failed
                if self._stopping.is_set():
                    return False
                await asyncio.sleep(1.0)
        return True

    async def _commit(self, msg: Message) -> bool:
        """Commit past ``msg``, synchronously, retrying a failure the coordinator recovers from; False
        when the group refuses it (the partition moved) or when stopping."""
        assert self._consumer is not None
        consumer = self._consumer
        tp = TopicPartition(str(msg.topic()), _partition(msg), int(msg.offset() or 0) + 1)
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                await loop.run_in_executor(self._executor, lambda: consumer.commit(offsets=[tp], asynchronous=False))
                return True
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or err.code() in _MOVED or not self._owned(msg):
                    log.warning("commit of %s[%d]@%d refused (%s): the partition moved; its new owner reads it "
                                "from the last commit", tp.topic, tp.partition, tp.offset, exc)
                    return False
                if self._stopping.is_set():
                    return False
                log.warning("commit of %s[%d]@%d failed (%s); retrying in %.1f s", tp.topic, tp.partition,
                            tp.offset, exc, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    # ---- rebalances (consumer thread, inside consume) --------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {p.partition for p in partitions}
        committed: list[TopicPartition] = []
        deadline = time.monotonic() + 30
        while True:  # the coordinator may be moving or loading: ask again for a while
            try:
                committed = consumer.committed(partitions, timeout=10)
                break
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    log.warning("cannot read the committed offsets of %s: the ids sent before are not remembered "
                                "(%s)", _fmt(partitions), exc)
                    break
                time.sleep(0.5)
        for tp in committed:
            if tp.offset > 0:
                try:
                    read_back(self._settings.kafka, self._topic, f"{self._group}-seen", tp.partition, tp.offset,
                              self._seen)
                except KafkaException as exc:
                    log.warning("cannot read back the requests below %s[%d]@%d: those ids are not remembered (%s)",
                                tp.topic, tp.partition, tp.offset, exc)
        log.info("assigned partitions=%s", _fmt(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned -= {p.partition for p in partitions}
        log.info("revoked partitions=%s", _fmt(partitions))


_MOVED = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
                    KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID})


def _run(pending: list[Pending], start: int) -> list[Pending]:
    """The record at ``start`` alone, or with the items after it from the same partition (one POST),
    by the records' parsed kind."""
    first = pending[start]
    if first.request is None or first.request.kind != "item":
        return [first]
    run = [first]
    for p in pending[start + 1:]:
        if (len(run) >= ITEMS_PER_POST or _partition(p.msg) != _partition(first.msg) or p.request is None
                or p.request.kind != "item"):
            break
        run.append(p)
    return run


def _fmt(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}[{p.partition}]" for p in partitions) or "-"


def _safe_url(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _partition(msg: Message) -> int:
    return int(msg.partition() or 0)


async def run_coop_reports(settings: Settings, *, until_idle: float | None = None,
                           registry: CollectorRegistry | None = None,
                           on_sender: Callable[[CoopSender], None] | None = None) -> None:
    """Run ``safeguard coop reports`` until SIGTERM/SIGINT, or idle for ``until_idle`` seconds."""
    from streams.app import register_output_schemas
    from streams.kafka.admin import require_topics
    from streams.ops.service import serving

    loop = asyncio.get_running_loop()
    metrics = SenderMetrics(registry or CollectorRegistry())
    sender = CoopSender(settings, metrics)  # checks the settings first
    topics = [settings.integrations.coop.outbox_topic, *output_topics(settings, writer="coop")]
    await loop.run_in_executor(None, lambda: require_topics(settings.kafka, topics))
    await loop.run_in_executor(None, lambda: register_output_schemas(settings, sender.encoder, writer="coop"))
    metrics.ready.set_function(lambda: float(sender.ready))
    if on_sender is not None:
        on_sender(sender)
    async with serving(sender.stop, port=settings.metrics.port, registry=metrics.registry,
                       ready=lambda: sender.ready):
        await sender.run(until_idle=until_idle)
