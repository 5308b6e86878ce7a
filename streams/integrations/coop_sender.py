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

**What is guaranteed.** Every request is sent until Coop takes or refuses it (nothing lost). A
request is sent once, except after a crash in the instant between Coop's answer and the commit
that follows it: that one request is sent again (at-least-once, one request per partition at
most). A request the consumer wrote twice (at-least-once delivery after a crash: same key, so the
same partition, same id) is sent once: the ids of the last ``DEDUPE_WINDOW`` requests of each
partition are remembered, and read back from below the committed offset when a partition is
assigned, so a restart or a rebalance remembers them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from streams.config import Settings
from streams.errors import ConfigError, ErrorType
from streams.integrations.coop import ITEMS_PATH, REPORT_PATH, Answer, CoopClient
from streams.kafka.config import consumer_config, producer_config, reader_config
from streams.wire.catalogue import DEAD_LETTER, output_topics
from streams.wire.codec import Encoder
from streams.wire.events import CoopRequest, Source, dead_letter_for

log = logging.getLogger(__name__)

DEDUPE_WINDOW = 10_000  # request ids remembered per partition
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
        self.ready = Gauge("safeguard_ready", "1 while partitions are assigned and Coop takes requests",
                           registry=registry)


class Seen:
    """The ids of the last ``limit`` requests of each partition."""

    def __init__(self, limit: int = DEDUPE_WINDOW) -> None:
        self._limit = limit
        self._ids: dict[int, OrderedDict[str, None]] = {}

    def __contains__(self, item: tuple[int, str]) -> bool:
        return item[1] in self._ids.get(item[0], ())

    def add(self, partition: int, ident: str) -> None:
        ids = self._ids.setdefault(partition, OrderedDict())
        ids[ident] = None
        ids.move_to_end(ident)
        while len(ids) > self._limit:
            ids.popitem(last=False)


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
        self._client = CoopClient(coop, stopping=self._stopping)
        self.encoder = Encoder(settings.output, settings.schema_registry)
        self._dlq = DEAD_LETTER.topic(settings)
        self._consumer_factory = consumer_factory
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="coop-consumer")
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.assigned: set[int] = set()
        self.done = 0  # records done (sent, rejected, duplicates, dead letters)

    @property
    def ready(self) -> bool:
        return bool(self.assigned) and self._client.waiting_since is None

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
        log.info("coop sender started topic=%s group=%s url=%s", self._topic, self._group,
                 self._settings.integrations.coop.url)
        self._metrics.waiting.set_function(lambda: time.monotonic() - self._client.waiting_since
                                           if self._client.waiting_since is not None else 0.0)
        last_input = time.monotonic()
        try:
            async with self._client:
                while not self._stopping.is_set():
                    msgs = await loop.run_in_executor(self._executor, consumer.consume, 500, 0.5)
                    msgs = [m for m in msgs if m.error() is None]
                    if msgs:
                        last_input = time.monotonic()
                        if not await self._handle(msgs):
                            break
                    elif (until_idle is not None and self.assigned
                          and time.monotonic() - last_input >= until_idle):
                        log.info("idle for %.1fs: exiting", until_idle)
                        break
        finally:
            await loop.run_in_executor(self._executor, consumer.close)
            self._executor.shutdown(wait=False)
            log.info("coop sender closed done=%d", self.done)

    # ---- one poll's records, in order ------------------------------------------------------------

    async def _handle(self, msgs: list[Message]) -> bool:
        """Send and commit each record in turn; False when stopping in the middle (the rest is read
        again after the restart)."""
        i = 0
        while i < len(msgs):
            run = self._run_of_items(msgs, i)
            pending = [self._parse(m) for m in run]
            if not await self._send(pending):
                return False
            await self._commit(run[-1])
            i += len(run)
        return True

    @staticmethod
    def _run_of_items(msgs: list[Message], start: int) -> list[Message]:
        """The record at ``start`` alone, or the items after it from the same partition (one POST)."""
        first = msgs[start]
        if not _is_item(first):
            return [first]
        run = [first]
        for m in msgs[start + 1:]:
            if len(run) >= ITEMS_PER_POST or m.partition() != first.partition() or not _is_item(m):
                break
            run.append(m)
        return run

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
            elif (_partition(p.msg), _seen_id(p.request)) in self._seen:
                self._metrics.requests.labels(p.request.kind, "duplicate").inc()
                log.info("coop %s %s written twice (a consumer restart): sent once", p.request.kind, p.request.id)
            else:
                todo.append(p)
        if not todo:
            self._flush()
            return True
        first = todo[0].request
        assert first is not None
        if first.kind == "report":
            answer = await self._client.send(REPORT_PATH, orjson.dumps(first.body), f"report {first.id}")
            if answer is None:
                return False
            self._answered(todo[0], answer)
        else:
            body = orjson.dumps({"items": [p.request.body for p in todo if p.request is not None]})
            answer = await self._client.send(ITEMS_PATH, body, f"{len(todo)} items")
            if answer is None:
                return False
            if answer.ok or len(todo) == 1:
                for p in todo:
                    self._answered(p, answer)
            else:  # Coop refuses the whole batch for one bad item: find it
                for p in todo:
                    if not await self._send([p]):
                        return False
        self._flush()
        return True

    def _answered(self, p: Pending, answer: Answer) -> None:
        request = p.request
        assert request is not None
        self.done += 1
        if answer.ok:
            self._seen.add(_partition(p.msg), _seen_id(request))
            self._metrics.requests.labels(request.kind, "sent").inc()
            return
        self._metrics.requests.labels(request.kind, "rejected").inc()
        self._seen.add(_partition(p.msg), _seen_id(request))
        self._dead_letter(p, ErrorType.INTEGRATION_REJECTED,
                          f"Coop answered {answer.status} to {request.kind} {request.id}: {answer.body}")

    def _dead_letter(self, p: Pending, error_type: ErrorType, error: str) -> None:
        msg = p.msg
        log.warning("dead letter (coop) topic=%s partition=%s offset=%s error_type=%s error=%s", msg.topic(),
                    msg.partition(), msg.offset(), error_type, error[:500])
        letter = dead_letter_for(source=Source(topic=str(msg.topic()), partition=int(msg.partition() or 0),
                                               offset=int(msg.offset() or 0)),
                                 key=msg.key(), value=msg.value(), error_type=error_type, error=error,
                                 event_id=p.request.event_id if p.request is not None else None)
        assert self._producer is not None
        self._producer.produce(self._dlq, self.encoder.encode(letter, DEAD_LETTER.schema, self._dlq), msg.key())
        self.done += p.request is None

    def _flush(self) -> None:
        """Dead letters are acknowledged before their offsets are committed."""
        assert self._producer is not None
        while self._producer.flush(10) > 0:
            log.warning("dead letters not acknowledged yet (is the broker reachable?); waiting")

    async def _commit(self, msg: Message) -> None:
        assert self._consumer is not None
        tp = TopicPartition(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0) + 1)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, lambda: self._consumer.commit(offsets=[tp],  # type: ignore[union-attr]
                                                                                      asynchronous=False))
        except KafkaException as exc:  # revoked meanwhile: the next owner reads it again, and knows the ids
            log.warning("commit of %s[%d]@%d failed: %s", tp.topic, tp.partition, tp.offset, exc)

    # ---- rebalances (consumer thread, inside consume) --------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {p.partition for p in partitions}
        with contextlib.suppress(KafkaException):
            committed = consumer.committed(partitions, timeout=10)
            for tp in committed:
                if tp.offset > 0:
                    self._remember(tp.partition, tp.offset)
        log.info("assigned partitions=%s", ",".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned -= {p.partition for p in partitions}
        log.info("revoked partitions=%s", ",".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _remember(self, partition: int, committed: int) -> None:
        """The ids of the requests just below the committed offset: done before this member had them."""
        reader = Consumer(reader_config(self._settings.kafka, f"{self._group}-seen") | {
            "isolation.level": "read_committed"})
        try:
            start = max(0, committed - DEDUPE_WINDOW)
            reader.assign([TopicPartition(self._topic, partition, start)])
            deadline = time.monotonic() + 30
            position = start
            while position < committed and time.monotonic() < deadline:
                for m in reader.consume(1000, 0.5):
                    if m.error() is not None or (m.offset() or 0) >= committed:
                        continue
                    with contextlib.suppress(ValidationError):
                        self._seen.add(partition, _seen_id(CoopRequest.model_validate_json(m.value() or b"")))
                position = reader.position([TopicPartition(self._topic, partition)])[0].offset
        finally:
            reader.close()


def _partition(msg: Message) -> int:
    return int(msg.partition() or 0)


def _is_item(msg: Message) -> bool:
    return (msg.key() or b"").startswith(b"item/")


def _seen_id(request: CoopRequest) -> str:
    return f"{request.kind}/{request.id}"


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
