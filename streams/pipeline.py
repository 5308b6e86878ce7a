"""The consumer pipeline: Kafka in, inference on replicas, labels out, offsets committed.

Concurrency model (chosen once): ONE asyncio event loop owns all state. Blocking librdkafka consumer
calls (``consume``, ``close``, and the rebalance callbacks they trigger) run on a single dedicated
thread through ``run_in_executor``; every other consumer call (pause, resume, commit) is made by the
poll loop between those awaits, so the consumer is never used from two threads at once. Producer
delivery callbacks are served by ``producer.poll(0)`` on the loop thread. Inference requests are
asyncio tasks over one aiohttp session, many in flight per replica.

Commit protocol (at_least_once), per event:
  1. The event's offset is registered with the partition's tracker when consumed.
  2. Each routed policy yields a label (plus a reasoning record if ``output.reasoning ==
     separate``) or a dead letter; bad input yields one dead letter.
  3. Every one of those records is produced; the event is done only when the broker has
     acknowledged all of them (delivery callback).
  4. Done events advance the partition's contiguous low watermark (out-of-order completion).
  5. Watermarks are committed every ``batching.commit_interval_s``, on revoke, and on shutdown.
  A crash at any point re-delivers everything after the last commit: duplicates, never a gap.

Backpressure: above ``batching.max_inflight_events`` (or with no healthy replica) all assigned
partitions are paused; the loop keeps calling ``consume`` so the member stays in the group, and
resumes below 75% of the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.config import Settings
from streams.errors import FatalError, PoisonError
from streams.events import ReasoningRecord, Source, dead_letter_for, decode_content
from streams.kafka_config import consumer_config
from streams.labeler import Labeler, Outcome
from streams.metrics import Metrics
from streams.offsets import OffsetTracker, TopicPartitionKey
from streams.policies import Policy
from streams.producer import OutputProducer
from streams.prompt import render_content
from streams.registry import PolicyRegistry
from streams.replicas.pool import ReplicaPool

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.1
RESUME_FRACTION = 0.75


@dataclass(eq=False)
class _Work:
    """One consumed event until all of its outputs are acknowledged."""

    key: TopicPartitionKey
    offset: int
    started: float
    outstanding: int
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Pipeline:
    """Runs the consumer until stopped (``stop()``, SIGTERM) or idle (``until_idle``)."""

    def __init__(self, settings: Settings, policies: PolicyRegistry, pool: ReplicaPool, metrics: Metrics) -> None:
        self._s = settings
        self._policies = policies
        self._pool = pool
        self._metrics = metrics
        self._labeler = Labeler(
            pool,
            model=settings.replicas.model,
            default_effort=settings.policies.reasoning_effort,
            max_attempts=settings.replicas.max_attempts,
            structured_output=settings.replicas.structured_output,
            inline_reasoning=settings.output.reasoning == "inline",
        )
        self._tracker = OffsetTracker()
        self._work: dict[TopicPartitionKey, set[_Work]] = {}
        self._inflight_events = 0
        self._paused = False
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._assigned_at: float | None = None
        self._last_input = 0.0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._producer: OutputProducer | None = None
        self.assigned: set[TopicPartitionKey] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the pipeline to drain and exit (safe to call from a signal handler on the loop)."""
        self._stopping.set()

    @property
    def policies(self) -> PolicyRegistry:
        return self._policies

    @property
    def inflight_events(self) -> int:
        """Events consumed whose outputs are not all acknowledged yet."""
        return self._inflight_events

    @property
    def ready(self) -> bool:
        return self._assigned_at is not None and self._pool.healthy_count > 0

    async def run(self, until_idle: float | None = None) -> None:
        """Consume until stopped or idle; drains, commits and closes. Raises FatalError on fatal errors."""
        self._loop = asyncio.get_running_loop()
        self._producer = OutputProducer(self._s, self._delivery_failed)
        conf = consumer_config(self._s)
        conf["error_cb"] = self._kafka_error
        self._consumer = Consumer(conf)
        self._consumer.subscribe(
            self._s.kafka.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("consumer started topics=%s group=%s", self._s.kafka.input_topics, self._s.kafka.group_id)
        last_commit = time.monotonic()
        try:
            while not self._stopping.is_set() and self._fatal is None:
                msgs = await self._loop.run_in_executor(
                    self._executor, self._consumer.consume, self._s.batching.max_poll_records, POLL_TIMEOUT_S
                )
                now = time.monotonic()
                if msgs:
                    self._last_input = now
                    for msg in msgs:
                        self._handle(msg, now)
                self._producer.poll(0)
                if now - last_commit >= self._s.batching.commit_interval_s:
                    self._commit(asynchronous=True)
                    last_commit = now
                self._apply_backpressure()
                if until_idle is not None and self._idle_for(now) >= until_idle and self._inflight_events == 0:
                    log.info("idle for %.1fs with nothing in flight: exiting", until_idle)
                    break
                await asyncio.sleep(0)  # let label tasks run between polls even under a flood
        finally:
            await self._shutdown()
        if self._fatal is not None:
            raise FatalError(f"pipeline stopped: {self._fatal}") from self._fatal

    def _idle_for(self, now: float) -> float:
        if self._assigned_at is None:
            return 0.0
        return now - max(self._assigned_at, self._last_input)

    async def _shutdown(self) -> None:
        assert self._loop is not None and self._consumer is not None and self._producer is not None
        deadline = time.monotonic() + self._s.batching.drain_timeout_s
        if self._inflight_events and self._fatal is None:
            log.info("draining in_flight_events=%d bound_s=%.0f", self._inflight_events,
                     self._s.batching.drain_timeout_s)
        while self._inflight_events and self._fatal is None and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(0.02)
        for works in self._work.values():
            for w in works:
                for t in w.tasks:
                    t.cancel()
        remaining = self._producer.flush(max(0.0, deadline - time.monotonic()) + 1.0)
        if remaining:
            log.error("shutdown with %d outputs unacknowledged: their events stay uncommitted", remaining)
        if self._fatal is None:
            self._commit(asynchronous=False)
        # close() leaves the group; its revoke callback runs on the consumer thread.
        await self._loop.run_in_executor(self._executor, self._consumer.close)
        self._executor.shutdown(wait=False)
        log.info("consumer closed in_flight_abandoned=%d", self._inflight_events)

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
        key = (topic, partition)
        self._tracker.add(topic, partition, offset)
        self._inflight_events += 1
        self._metrics.events_consumed.labels(topic).inc()
        source = Source(topic=topic, partition=partition, offset=offset)
        value = msg.value()
        event_id: str | None = None
        try:
            event = decode_content(value, max_bytes=self._s.input.max_event_bytes)
            event_id = event.event_id
            policies = self._policies.resolve(topic=topic, kind=event.kind, requested=event.policies)
        except PoisonError as exc:
            work = self._start(key, offset, now, outstanding=1)
            self._dead_letter(work, source, msg.key(), value, exc, event_id=event_id)
            return
        work = self._start(key, offset, now, outstanding=len(policies))
        content = render_content(event)
        for group in self._groups(policies):
            task = asyncio.create_task(self._label(work, group, event.event_id, content, source, event.metadata,
                                                   msg.key(), value))
            work.tasks.add(task)
            task.add_done_callback(work.tasks.discard)

    def _groups(self, policies: list[Policy]) -> list[list[Policy]]:
        """Requests per event: one per policy, or (combined mode) one for all acting policies.
        Shadow policies always get their own request so they cannot change acting verdicts."""
        if self._s.policies.mode != "combined":
            return [[p] for p in policies]
        acting = [p for p in policies if not p.meta.shadow]
        groups = [acting] if len(acting) > 1 else [[p] for p in acting]
        return groups + [[p] for p in policies if p.meta.shadow]

    def _start(self, key: TopicPartitionKey, offset: int, now: float, outstanding: int) -> _Work:
        work = _Work(key=key, offset=offset, started=now, outstanding=outstanding)
        self._work.setdefault(key, set()).add(work)
        return work

    async def _label(
        self,
        work: _Work,
        group: list[Policy],
        event_id: str,
        content: str,
        source: Source,
        metadata: dict[str, str] | None,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        if len(group) == 1:
            outcomes = [await self._labeler.label(group[0], event_id=event_id, content=content, source=source,
                                                  metadata=metadata, started=work.started)]
        else:
            outcomes = await self._labeler.label_combined(group, event_id=event_id, content=content, source=source,
                                                          metadata=metadata, started=work.started)
        for outcome in outcomes:
            self._emit(work, outcome, source, key, value, event_id)

    def _emit(self, work: _Work, outcome: Outcome, source: Source, key: bytes | None, value: bytes | None,
              event_id: str) -> None:
        if outcome.failure is not None:
            self._dead_letter(work, source, key, value, outcome.failure, event_id=event_id,
                              policy_id=outcome.policy.id, attempts=outcome.attempts)
            return
        label = outcome.label
        assert label is not None and self._producer is not None
        separate = self._s.output.reasoning == "separate"
        work.outstanding += 1 if separate else 0
        counter = self._metrics.labels_produced.labels(label.policy_id, str(label.violation).lower(),
                                                       label.decided_by)
        self._producer.label(label, key, self._on_acked(work, counter.inc), shadow=outcome.policy.meta.shadow)
        if separate:
            record = ReasoningRecord(label_id=label.label_id, event_id=label.event_id, policy_id=label.policy_id,
                                     reasoning=outcome.reasoning)
            self._producer.reasoning(record, key, lambda: self._acked(work))

    def _dead_letter(self, work: _Work, source: Source, key: bytes | None, value: bytes | None,
                     exc: PoisonError, *, event_id: str | None, policy_id: str | None = None,
                     attempts: int = 1) -> None:
        assert self._producer is not None
        log.warning("dead letter topic=%s partition=%d offset=%d error_type=%s policy=%s error=%s",
                    source.topic, source.partition, source.offset, exc.error_type, policy_id, exc)
        letter = dead_letter_for(source=source, key=key, value=value, error_type=exc.error_type, error=str(exc),
                                 event_id=event_id, policy_id=policy_id, attempts=attempts)
        counter = self._metrics.dead_letters.labels(exc.error_type)
        self._producer.dead_letter(letter, key, self._on_acked(work, counter.inc))

    def _on_acked(self, work: _Work, count: Callable[[], None]) -> Callable[[], None]:
        def acked() -> None:
            count()
            self._acked(work)
        return acked

    def _acked(self, work: _Work) -> None:
        work.outstanding -= 1
        if work.outstanding:
            return
        works = self._work.get(work.key)
        if works is None or work not in works:
            return  # partition revoked meanwhile: its offsets belong to the new owner now
        works.discard(work)
        self._inflight_events -= 1
        self._tracker.complete(work.key[0], work.key[1], work.offset)
        self._metrics.event_latency.observe(time.monotonic() - work.started)

    # ---- offsets, backpressure ---------------------------------------------------------------

    def _commit(self, *, asynchronous: bool) -> None:
        positions = self._tracker.take_commits()
        if not positions or self._consumer is None:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed (will retry with the next commit) error=%s", exc)

    def _apply_backpressure(self) -> None:
        assert self._consumer is not None
        limit = self._s.batching.max_inflight_events
        no_replica = self._pool.healthy_count == 0
        if not self._paused and (self._inflight_events >= limit or no_replica):
            parts = self._consumer.assignment()
            if parts:
                self._consumer.pause(parts)
                self._paused = True
                log.warning("paused partitions=%d in_flight_events=%d healthy_replicas=%d",
                            len(parts), self._inflight_events, self._pool.healthy_count)
        elif self._paused and self._inflight_events < limit * RESUME_FRACTION and not no_replica:
            parts = self._consumer.assignment()
            self._consumer.resume(parts)
            self._paused = False
            log.info("resumed partitions=%d in_flight_events=%d", len(parts), self._inflight_events)

    # ---- callbacks from other threads ----------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs on the consumer thread inside consume().
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        if self._assigned_at is None:
            self._assigned_at = time.monotonic()
        if self._paused and partitions:
            consumer.pause(partitions)
        log.info("assigned partitions=%s", _fmt(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs on the consumer thread: let the loop settle the revoked partitions, then commit here.
        keys = [(p.topic, p.partition) for p in partitions]
        assert self._loop is not None
        positions: dict[TopicPartitionKey, int] = {}
        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._release(keys), self._loop)
            positions = fut.result(timeout=30)
        if positions:
            with contextlib.suppress(KafkaException):
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                                asynchronous=False)
        self.assigned -= set(keys)
        log.info("revoked partitions=%s committed=%s", _fmt(partitions), positions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        assert self._loop is not None
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._release(keys), self._loop).result(timeout=30)
        self.assigned -= set(keys)
        log.warning("lost partitions=%s (not committed)", _fmt(partitions))

    async def _release(self, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Revoked partitions: collect acked outputs, abandon unfinished work, return positions."""
        assert self._producer is not None
        self._producer.flush(5.0)
        positions = self._tracker.positions(keys)
        for key in keys:
            for w in self._work.pop(key, set()):
                self._inflight_events -= 1
                for t in w.tasks:
                    t.cancel()
        self._tracker.drop(keys)
        return positions

    def _delivery_failed(self, topic: str, err: KafkaError) -> None:
        log.error("output not delivered topic=%s error=%s: stopping without committing past it", topic, err)
        self._fatal = KafkaException(err)

    def _kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = KafkaException(err)
            log.error("fatal kafka error: %s", err)
        else:
            log.warning("kafka error: %s", err)


def _fmt(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}[{p.partition}]" for p in partitions) or "-"

