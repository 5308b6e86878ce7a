"""The consumer pipeline: Kafka in, inference on replicas, labels out, offsets committed.

Concurrency model (chosen once): ONE asyncio event loop owns all state. Blocking librdkafka consumer
calls (``consume``, ``close``, and the rebalance callbacks they trigger) run on a single dedicated
thread through ``run_in_executor``; every other consumer call (pause, resume, seek, commit) is made
by the poll loop between those awaits, so the consumer is never used from two threads at once.
Rebalance callbacks hand their work to the loop with ``run_coroutine_threadsafe`` and wait.
Producer calls and delivery callbacks run on the loop thread, delivery reports served by a pump task
(:func:`streams.delivery.serve_reports`, which also batches replica I/O under load). Inference requests are asyncio
tasks over keep-alive HTTP connections (:mod:`streams.replicas.http`), many in flight per replica,
so a slow model never stalls polling and ``max.poll.interval.ms`` is never exceeded because of
inference. Labels already in the dedupe cache are produced without a task.

Per event: consume -> decode and route (poison: a dead letter) -> one inference task per policy
(or per group, in combined mode) -> output records collected on the event's :class:`Work` -> the
delivery strategy produces them and commits offsets (the commit protocol is documented in
:mod:`streams.delivery`).

Backpressure (:mod:`streams.backpressure`): polls take no more than the replicas' free slots plus
about half a second of work waiting locally (the rest of the backlog stays in Kafka, as lag); with
no room, polling holds for a moment. Partitions are paused at ``batching.max_inflight_events``
events consumed and not settled (exact), when a hold lasts, or with no healthy replica; the loop
keeps calling ``consume`` then, so the member stays in the group, and resumes by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.backpressure import Backpressure
from streams.cache import DedupeCache
from streams.codec import Codec
from streams.config import Settings
from streams.delivery import AtLeastOnce, Delivery, ExactlyOnce, Ledger, serve_reports
from streams.errors import FatalError, PoisonError
from streams.events import ReasoningRecord, Source, dead_letter_for
from streams.kafka_config import consumer_config, transactional_id
from streams.labeler import Decision, Labeler, Outcome, SourceRef, decision_bytes
from streams.logutil import RateLimitedLog
from streams.metrics import Children, Metrics, lags_from_stats
from streams.policies import Policy
from streams.producer import OutputProducer
from streams.prompt import render_content
from streams.registry import PolicyRegistry
from streams.replicas.pool import ReplicaPool
from streams.work import OutRecord, TopicPartitionKey, Work

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.1  # idle, or paused with no healthy replica: wait this long for new records
BUSY_POLL_TIMEOUT_S = 0.02  # records flowing, or held back by backpressure: come back this often


class Pipeline:
    """Runs the consumer until stopped (``stop()``, SIGTERM) or idle (``until_idle``)."""

    def __init__(self, settings: Settings, policies: PolicyRegistry, pool: ReplicaPool, metrics: Metrics) -> None:
        self._s = settings
        self._policies = policies
        self._pool = pool
        self._metrics = metrics
        self.cache: DedupeCache[Decision] | None = (
            DedupeCache(settings.cache.max_entries, max_bytes=settings.cache.max_bytes, size=decision_bytes)
            if settings.cache.max_entries else None)
        self._labeler = Labeler(
            pool,
            model=settings.replicas.model,
            default_effort=settings.policies.reasoning_effort,
            max_attempts=settings.replicas.max_attempts,
            structured_output=settings.replicas.structured_output,
            inline_reasoning=settings.output.reasoning == "inline",
            cache=self.cache,
        )
        k = settings.kafka
        self._topics = {"label": k.labels_topic, "shadow": k.labels_topic + ".shadow", "dlq": k.dead_letter_topic,
                        "reasoning": k.reasoning_topic}
        self._ledger = Ledger(self._settled)
        self._codec = Codec(settings)
        self._delivery: Delivery | None = None
        self._paused = False
        self._outage = False  # paused because no replica was healthy (logged as a warning)
        self._held_since: float | None = None  # polling held: replicas and local queue full
        self._backpressure = Backpressure(settings.batching.max_inflight_events, settings.batching.max_poll_records)
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._assigned_at: float | None = None
        self._last_input = 0.0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self.assigned: set[TopicPartitionKey] = set()
        self.consumed = 0
        self._consumed_count = Children(metrics.events_consumed)
        self._labels_count = Children(metrics.labels_produced)
        self._dead_count = Children(metrics.dead_letters)
        self._separate_reasoning = settings.output.reasoning == "separate"
        self._kafka_log = RateLimitedLog(log, 30.0)
        self._dlq_log = RateLimitedLog(log, 1.0)

    # ---- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the pipeline to drain and exit (safe to call from a signal handler on the loop)."""
        self._stopping.set()

    @property
    def policies(self) -> PolicyRegistry:
        return self._policies

    @property
    def inflight_events(self) -> int:
        """Events consumed and not settled yet."""
        return self._ledger.count

    @property
    def ready(self) -> bool:
        return self._assigned_at is not None and self._pool.healthy_count > 0

    async def run(self, until_idle: float | None = None) -> None:
        """Consume until stopped or idle; drains, commits and closes. Raises FatalError on fatal errors."""
        self._loop = loop = asyncio.get_running_loop()
        if self._s.delivery == "exactly_once":
            producer = OutputProducer(self._s, self._delivery_failed, transactional_id(self._s))
            self._delivery = ExactlyOnce(self._s, self._ledger, producer)
        else:
            self._delivery = AtLeastOnce(self._s, self._ledger, OutputProducer(self._s, self._delivery_failed))
        await loop.run_in_executor(self._executor, self._delivery.start)
        conf = consumer_config(self._s) | {"error_cb": self._kafka_error, "stats_cb": self._stats}
        self._consumer = consumer = Consumer(conf)
        consumer.subscribe(self._s.kafka.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        log.info("consumer started topics=%s group=%s delivery=%s", self._s.kafka.input_topics,
                 self._s.kafka.group_id, self._s.delivery)
        pump = asyncio.create_task(serve_reports(self._delivery, lambda: self._pool.inflight,
                                                 self._s.batching.io_batch_ms / 1000))
        msgs: list[Message] = []
        try:
            while not self._stopping.is_set() and self._fatal is None:
                # A consume() is a thread hand-off (few and full is cheap); a late resume idles replicas.
                busy = self._paused and not self._outage or msgs and not self._paused
                size = self._backpressure.poll_size(self._ledger.count, self._pool.waiting, self._pool.free_slots)
                if size or self._paused:
                    self._held_since = None
                    msgs = await loop.run_in_executor(self._executor, consumer.consume, max(size, 1),
                                                      BUSY_POLL_TIMEOUT_S if busy else POLL_TIMEOUT_S)
                else:  # replicas and local queue full: hold polling a moment (see streams.backpressure)
                    self._held_since, msgs = self._held_since or time.monotonic(), []
                    await asyncio.sleep(BUSY_POLL_TIMEOUT_S)
                now = time.monotonic()
                if msgs:
                    self._last_input = now
                    for msg in msgs:
                        self._handle(msg, now)
                self._delivery.tick(now, consumer)
                self._apply_backpressure(now)
                if until_idle is not None and self._idle_for(now) >= until_idle and self._ledger.count == 0:
                    log.info("idle for %.1fs with nothing in flight: exiting", until_idle)
                    break
                await asyncio.sleep(0)  # let inference tasks run between polls even under a flood
        finally:
            pump.cancel()
            await self._shutdown()
        if self._fatal is not None:
            raise FatalError(f"pipeline stopped: {self._fatal}") from self._fatal

    def _idle_for(self, now: float) -> float:
        if self._assigned_at is None:
            return 0.0
        return now - max(self._assigned_at, self._last_input)

    async def _shutdown(self) -> None:
        assert self._loop is not None and self._consumer is not None and self._delivery is not None
        deadline = time.monotonic() + self._s.batching.drain_timeout_s
        if self._ledger.count and self._fatal is None:
            log.info("draining in_flight_events=%d bound_s=%.0f", self._ledger.count, self._s.batching.drain_timeout_s)
            await self._delivery.drain(deadline)
        try:
            self._delivery.close(self._consumer, deadline, commit=self._fatal is None)
        except FatalError as exc:
            log.error("final commit failed: %s", exc)
        abandoned = self._ledger.drop_all()  # after the commit: dropping forgets their partitions
        # close() leaves the group; its revoke callback runs on the consumer thread.
        await self._loop.run_in_executor(self._executor, self._consumer.close)
        self._executor.shutdown(wait=False)
        log.info("consumer closed in_flight_abandoned=%d", abandoned)

    # ---- per message -----------------------------------------------------------------------

    def _handle(self, msg: Message, now: float) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                self._fatal = KafkaException(err)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err)
            return
        topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
        self.consumed += 1
        self._consumed_count(topic).inc()
        source = (topic, partition, offset)
        value = msg.value()
        work = Work(key=(topic, partition), offset=offset, started=now, msg_key=msg.key(), pending=0)
        self._ledger.add(work)
        event_id: str | None = None
        try:
            event = self._codec.decode(value, topic)
            event_id = event.event_id
            policies = self._policies.resolve(topic=topic, kind=event.kind, requested=event.policies)
        except PoisonError as exc:
            self._dead_letter(work, source, value, exc, event_id=event_id)
            self._finish(work)
            return
        content = render_content(event)
        for group in self._groups(policies):
            key = None
            if len(group) == 1:
                # Fast path: a label the dedupe cache already holds needs no task and no await.
                hit = self._labeler.from_cache(group[0], event_id=event.event_id, content=content, source=source,
                                               metadata=event.metadata, started=now)
                if isinstance(hit, Outcome):
                    self._collect(work, hit, source, value, event.event_id)
                    continue
                key = hit
            work.pending += 1
            task = asyncio.create_task(self._label(work, group, event.event_id, content, source, event.metadata,
                                                   value, key))
            work.tasks.add(task)
            task.add_done_callback(work.tasks.discard)
        if work.pending == 0:
            self._finish(work)

    def _groups(self, policies: list[Policy]) -> list[list[Policy]]:
        """Requests per event: one per policy, or (combined mode) one for all acting policies.
        Shadow policies always get their own request so they cannot change acting verdicts."""
        if self._s.policies.mode != "combined":
            return [[p] for p in policies]
        acting = [p for p in policies if not p.meta.shadow]
        groups = [acting] if len(acting) > 1 else [[p] for p in acting]
        return groups + [[p] for p in policies if p.meta.shadow]

    async def _label(self, work: Work, group: list[Policy], event_id: str, content: str, source: SourceRef,
                     metadata: dict[str, str] | None, value: bytes | None, key: bytes | None) -> None:
        try:
            if len(group) == 1:
                outcomes = [await self._labeler.label(group[0], event_id=event_id, content=content, source=source,
                                                      metadata=metadata, started=work.started, key=key)]
            else:
                outcomes = await self._labeler.label_combined(group, event_id=event_id, content=content,
                                                              source=source, metadata=metadata, started=work.started)
        except Exception as exc:  # noqa: BLE001 - a bug triggered by one event must not stall its partition
            log.exception("internal error labelling topic=%s partition=%d offset=%d", *source)
            failure = PoisonError("internal_error", f"{type(exc).__name__}: {exc}")
            outcomes = [Outcome(policy=p, failure=failure) for p in group]
        if not self._ledger.holds(work):
            return  # partition revoked or rewound meanwhile: the event will be consumed again
        for outcome in outcomes:
            self._collect(work, outcome, source, value, event_id)
        work.pending -= 1
        if work.pending == 0:
            self._finish(work)

    def _collect(self, work: Work, outcome: Outcome, source: SourceRef, value: bytes | None, event_id: str) -> None:
        if outcome.failure is not None:
            self._dead_letter(work, source, value, outcome.failure, event_id=event_id,
                              policy_id=outcome.policy.id, attempts=outcome.attempts)
            return
        label = outcome.label
        assert label is not None
        counter = self._labels_count(label["policy_id"], "true" if label["violation"] else "false",
                                     label["decided_by"])
        topic = self._topics["shadow" if outcome.policy.meta.shadow else "label"]
        work.records.append(OutRecord(topic, self._codec.encode(label, "label", topic), counter.inc))
        if self._separate_reasoning:
            record = ReasoningRecord(label_id=label["label_id"], event_id=event_id, policy_id=label["policy_id"],
                                     reasoning=outcome.reasoning)
            topic = self._topics["reasoning"]
            work.records.append(OutRecord(topic, self._codec.encode(record, "reasoning", topic)))

    def _dead_letter(self, work: Work, source: SourceRef, value: bytes | None, exc: PoisonError, *,
                     event_id: str | None, policy_id: str | None = None, attempts: int = 1) -> None:
        topic, partition, offset = source
        self._dlq_log.log(logging.WARNING, exc.error_type,
                          "dead letter topic=%s partition=%d offset=%d error_type=%s policy=%s error=%s",
                          topic, partition, offset, exc.error_type, policy_id, exc)
        letter = dead_letter_for(source=Source(topic=topic, partition=partition, offset=offset), key=work.msg_key,
                                 value=value, error_type=exc.error_type, error=str(exc), event_id=event_id,
                                 policy_id=policy_id, attempts=attempts)
        counter = self._dead_count(exc.error_type)
        dlq = self._topics["dlq"]
        work.records.append(OutRecord(dlq, self._codec.encode(letter, "dead_letter", dlq), counter.inc))

    def _finish(self, work: Work) -> None:
        assert self._delivery is not None
        self._delivery.complete(work)

    def _settled(self, work: Work) -> None:
        self._metrics.event_latency.observe(time.monotonic() - work.started)

    # ---- backpressure --------------------------------------------------------------------------

    def _apply_backpressure(self, now: float) -> None:
        """Pause or resume fetching (:mod:`streams.backpressure`); only outage pauses are warnings."""
        assert self._consumer is not None
        count, waiting, healthy = self._ledger.count, self._pool.waiting, self._pool.healthy_count > 0
        self._backpressure.update(now, self._pool.answered + (self.cache.hits if self.cache else 0))
        if self._paused:
            if self._backpressure.may_resume(count, waiting, healthy):
                self._consumer.resume(self._consumer.assignment())
                self._paused = False
                log.log(logging.INFO if self._outage else logging.DEBUG, "resumed partitions in_flight=%d", count)
                self._outage = False
            elif not healthy and not self._outage:
                self._outage = True
                log.warning("paused partitions: no healthy replica in_flight_events=%d", count)
            return
        reason = self._backpressure.reason_to_pause(count, waiting, healthy, now - (self._held_since or now))
        parts = self._consumer.assignment() if reason else []
        if parts:
            self._consumer.pause(parts)
            self._paused, self._outage = True, not healthy
            log.log(logging.WARNING if self._outage else logging.DEBUG,
                    "paused partitions: %s in_flight_events=%d waiting_for_replica=%d", reason, count, waiting)

    # ---- callbacks from the consumer thread ------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        if self._assigned_at is None:
            self._assigned_at = time.monotonic()
        if partitions:
            # Set the pause state explicitly: a partition coming back to this member may still carry
            # the pause it had when it was revoked, and would then never be fetched again.
            (consumer.pause if self._paused else consumer.resume)(partitions)
        log.info("assigned partitions=%s", _fmt(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        positions = self._on_loop(self._revoke(keys))
        if positions:
            try:
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                                asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed: %s", exc)
        self.assigned -= set(keys)
        log.info("revoked partitions=%s committed=%s", _fmt(partitions), positions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._on_loop(self._lose(keys))
        self.assigned -= set(keys)
        log.warning("lost partitions=%s (not committed)", _fmt(partitions))

    def _on_loop(self, coro: object) -> dict[TopicPartitionKey, int]:
        assert self._loop is not None
        if not self._loop.is_running():
            coro.close()  # type: ignore[attr-defined]
            return {}
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)  # type: ignore[arg-type]

    async def _revoke(self, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        assert self._delivery is not None and self._consumer is not None
        try:
            return self._delivery.revoke(keys, self._consumer)
        except FatalError as exc:
            self._fatal = exc
            self._ledger.drop(keys)
            return {}

    async def _lose(self, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        self._ledger.drop(keys)
        return {}

    def _stats(self, raw: str) -> None:
        """librdkafka statistics (consumer thread): per-partition lag for the lag gauge (KEDA, alerts)."""
        for topic, part, lag in lags_from_stats(raw):
            if (topic, part) in self.assigned:
                self._metrics.consumer_lag.labels(topic, str(part)).set(lag)

    def _delivery_failed(self, topic: str, err: KafkaError) -> None:
        log.error("output not delivered topic=%s error=%s: stopping without committing past it", topic, err)
        self._fatal = KafkaException(err)

    def _kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = KafkaException(err)
            log.error("fatal kafka error: %s", err)
            return
        # librdkafka retries these itself and logs each attempt; say it once per code per 30 s.
        self._kafka_log.log(logging.WARNING, err.code(), "kafka error (librdkafka keeps retrying): %s", err)


def _fmt(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}[{p.partition}]" for p in partitions) or "-"
