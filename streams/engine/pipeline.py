"""The consumer's poll loop: moves batches of events through the stages and serves Kafka's callbacks.

The stage map (docs/architecture.md has the picture)::

    consume ─► Work per record ─► decode ─► route ─► [prefilter] ─► dedupe   (engine/stages.py, per batch)
                                                                   │
                                 open requests ─► inference tasks  (engine/dispatch.py, concurrent)
                                                                   │
                      all decided ─► outputs (engine/outputs.py) ─► delivery (engine/delivery/)

Concurrency model (chosen once): ONE asyncio event loop owns all state. Blocking librdkafka consumer
calls (``consume``, ``close``, and the rebalance callbacks they trigger) run on a single dedicated
thread through ``run_in_executor``; every other consumer call (pause, resume, seek, commit) is made
on the loop thread between those awaits. Rebalance callbacks hand their work to the loop and wait;
the consumer calls that work makes meanwhile are carried out by the waiting consumer thread
(:mod:`streams.engine.loop_consumer`), so the consumer is never used from two threads at once.
Producer calls and delivery reports run on the loop thread (:mod:`streams.engine.pump`). Inference
requests are asyncio tasks over keep-alive HTTP connections, many in flight per replica, so a slow
model never stalls polling and ``max.poll.interval.ms`` is never exceeded because of inference.

Backpressure (:mod:`streams.engine.backpressure`) sizes each poll and pauses the partitions when
memory, the local queue or an outage says so; the loop keeps calling ``consume`` while paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.config import BatchingSettings, KafkaSettings
from streams.engine.backpressure import FlowControl
from streams.engine.deadlines import Deadlines
from streams.engine.delivery import Delivery
from streams.engine.dispatch import Dispatch
from streams.engine.lanes import Lanes
from streams.engine.loop_consumer import LoopConsumer
from streams.engine.outputs import OutputStage
from streams.engine.pump import serve_reports
from streams.engine.stages import Stage
from streams.engine.waiting import Waiting
from streams.engine.work import TopicPartitionKey, Work
from streams.errors import ErrorType, FatalError, PoisonError, RetryableError
from streams.inference.labeler import Labeler
from streams.inference.replicas.backend import Capacity
from streams.kafka.config import consumer_config
from streams.ops.logutil import RateLimitedLog
from streams.ops.metrics import Children, Metrics, lags_from_stats

log = logging.getLogger(__name__)


class Pipeline:
    """Runs the consumer until stopped (``stop()``, SIGTERM) or idle (``until_idle``).

    Built by :func:`streams.app.run_consumer` from its parts: the stages before inference, the
    labeler (inference), outputs, a delivery strategy and the flow control.
    """

    def __init__(self, kafka: KafkaSettings, batching: BatchingSettings, *, stages: Sequence[Stage],
                 labeler: Labeler | None, outputs: OutputStage, delivery: Delivery, flow: FlowControl, pool: Capacity,
                 metrics: Metrics, decided: Callable[[], int], deadline_s: float | None = None,
                 lanes: Lanes | None = None,
                 consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer) -> None:
        """``decided()``: decisions made so far (replica answers plus cache hits: the rate backpressure
        sizes the local queue by). ``consumer_factory``: builds the Kafka consumer from its
        librdkafka configuration (a test double in unit tests)."""
        self._kafka = kafka
        self._batching = batching
        self._stages = list(stages)
        self._outputs = outputs
        self._delivery = delivery
        self._ledger = delivery.ledger
        self._ledger.on_settled = self._settled
        self._dispatch = Dispatch(labeler, self._ledger.holds, self._finish, Children(metrics.lane_wait))
        self._flow = flow
        self._pool = pool
        self._metrics = metrics
        self._decided = decided
        self._consumer_factory = consumer_factory
        self._lanes = lanes
        if lanes is not None:
            flow.held = lanes.held
        self._urgent: Callable[[Work], bool] | None = getattr(outputs, "urgent", None)
        self._deadlines: Deadlines | None = None
        if deadline_s is not None:
            view, build = getattr(outputs, "view", None), getattr(outputs, "deadline", None)
            assert view is not None and build is not None, "deadline decisions need outputs that build them"
            self._deadlines = Deadlines(deadline_s, view=view, build=build, send=delivery.send_now,
                                        holds=self._ledger.holds)
        self._waiting = Waiting()
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._assigned_at: float | None = None
        self._last_input = 0.0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: LoopConsumer | None = None
        self.assigned: set[TopicPartitionKey] = set()
        self.consumed = 0
        self._consumed_count = Children(metrics.events_consumed)
        self._kafka_log = RateLimitedLog(log, 30.0)

    # ---- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the pipeline to drain and exit (safe to call from a signal handler on the loop)."""
        self._stopping.set()

    @property
    def capacity(self) -> Capacity:
        """The replica capacity this pipeline paces itself by (the pool; the bench times its requests)."""
        return self._pool

    @property
    def inflight_events(self) -> int:
        """Events consumed and not settled yet."""
        return self._ledger.count

    @property
    def ready(self) -> bool:
        """Partitions assigned (or idle-ready), a healthy replica, and no outage holding events."""
        return self._assigned_at is not None and self._pool.healthy_count > 0 and not self._waiting

    def _settled(self, work: Work) -> None:
        """The ledger's settle hook: the event's end-to-end latency, and one more event for the cost
        per event of the pending-work gauge."""
        self._metrics.event_latency.observe(time.monotonic() - work.consumed_at)
        self._metrics.work_rate.add_events()

    async def run(self, until_idle: float | None = None) -> None:
        """Consume until stopped or idle; drains, commits and closes. Raises FatalError on fatal errors."""
        self._loop = loop = asyncio.get_running_loop()
        conf = consumer_config(self._kafka) | {"error_cb": self._kafka_error, "stats_cb": self._stats}
        self._consumer = consumer = LoopConsumer(self._consumer_factory(conf))
        try:  # binds delivery to the consumer; exactly-once also initialises transactions (blocking)
            await loop.run_in_executor(self._executor, self._delivery.start, consumer)
        except BaseException:
            await loop.run_in_executor(self._executor, consumer.close)  # never subscribed: nothing to leave
            self._executor.shutdown(wait=False)
            raise
        consumer.subscribe(self._kafka.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        log.info("consumer started topics=%s group=%s", self._kafka.input_topics, self._kafka.group_id)
        pump = asyncio.create_task(serve_reports(self._delivery, lambda: self._pool.inflight,
                                                 self._batching.io_batch_ms / 1000))
        flow, pool, ledger = self._flow, self._pool, self._ledger
        msgs: list[Message] = []
        try:
            while not self._stopping.is_set() and self._fatal is None:
                timeout = flow.poll_timeout(bool(msgs))
                size = flow.poll_size(time.monotonic(), ledger.count, pool.waiting, pool.free_slots)
                if size:
                    msgs = await loop.run_in_executor(self._executor, consumer.consume, size, timeout)
                else:  # replicas and local queue full: hold polling a moment
                    msgs = []
                    await asyncio.sleep(timeout)
                now = time.monotonic()
                if msgs:
                    self._last_input = now
                    self._advance(msgs, now)
                if self._waiting:
                    self._retry_waiting(now)
                self._delivery.tick(now)
                if self._deadlines is not None:
                    self._deadlines.tick(time.time())
                if self._delivery.failure is not None:
                    self._fatal = self._delivery.failure
                flow.apply(consumer, now, inflight_events=ledger.count, waiting=pool.waiting,
                           healthy=pool.healthy_count > 0, decided=self._decided(), blocked=self._waiting.reason)
                if self._lanes is not None:
                    self._lanes.apply(consumer, now, self.assigned, flow_paused=flow.paused)
                if until_idle is not None and self._idle_for(now) >= until_idle and ledger.count == 0:
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
        assert self._loop is not None and self._consumer is not None
        deadline = time.monotonic() + self._batching.drain_timeout_s
        if self._ledger.count and self._fatal is None:
            log.info("draining in_flight_events=%d bound_s=%.0f", self._ledger.count,
                     self._batching.drain_timeout_s)
            await self._delivery.drain(deadline)
            if self._ledger.count:
                log.warning("drain bound reached with %d events unsettled (not committed: consumed again after "
                            "the restart) waiting_for_outage=%d", self._ledger.count, len(self._waiting))
        self._delivery.flush_timeout_s = max(0.0, deadline - time.monotonic())  # the revoke close() triggers
        try:
            self._delivery.close(deadline, commit=self._fatal is None)
        except FatalError as exc:
            log.error("final commit failed: %s", exc)
        abandoned = self._ledger.drop_all()  # after the commit: dropping forgets their partitions
        # close() leaves the group; its revoke callback runs on the consumer thread.
        await self._loop.run_in_executor(self._executor, self._consumer.close)
        self._executor.shutdown(wait=False)
        log.info("consumer closed in_flight_abandoned=%d", abandoned)

    # ---- moving a batch through the stages ---------------------------------------------------

    def _advance(self, msgs: list[Message], now: float) -> None:
        batch: list[Work] = []
        per_topic: dict[str, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    self._fatal = KafkaException(err)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            topic = cast(str, msg.topic())
            work = Work((topic, cast(int, msg.partition())), cast(int, msg.offset()), msg.key(), msg.value(), now)
            kind, ms = msg.timestamp()
            if kind:  # TIMESTAMP_CREATE_TIME or TIMESTAMP_LOG_APPEND_TIME
                work.timestamp = ms / 1000
            self._ledger.add(work)
            per_topic[topic] = per_topic.get(topic, 0) + 1
            batch.append(work)
        for topic, count in per_topic.items():
            self._consumed_count(topic).inc(count)
        self.consumed += len(batch)
        self._run_stages(batch, now)

    def _run_stages(self, batch: list[Work], now: float) -> None:
        for stage in self._stages:
            try:
                stage(batch)
            except Exception:  # noqa: BLE001 - a bug met by one event must not stall the batch
                for work in batch:  # again one at a time, to find the event (stages are idempotent)
                    try:
                        stage([work])
                    except Exception as exc:  # noqa: BLE001
                        log.exception("internal error in a stage topic=%s partition=%d offset=%d", work.tp[0],
                                      work.tp[1], work.offset)
                        work.failure = PoisonError(ErrorType.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        if self._deadlines is not None:
            wall = time.time()
            for work in batch:
                self._deadlines.track(work, wall)
        for work in batch:
            if work.deferred is not None:
                self._waiting.hold(work, "stages", work.deferred, now)
                work.deferred = None
            elif work.open:
                if self._urgent is not None and self._urgent(work):
                    work.priority = 0  # its provisional action is urgent: it goes first to the replicas
                self._dispatch.start(work)
            else:
                self._finish(work)

    def _finish(self, work: Work) -> None:
        """Everything about the event is decided: build its records and hand it to delivery. Whatever
        building raises, the event ends settled: it waits out a registry outage, or it is
        dead-lettered as ``internal_error``; an event that cannot even be dead-lettered stops the
        consumer (nothing is committed past it)."""
        try:
            self._outputs.build(work)
        except RetryableError as exc:
            work.records.clear()
            self._waiting.hold(work, "outputs", str(exc), time.monotonic())
            return
        except Exception as exc:  # noqa: BLE001 - this event's problem (a bug, or a record its schema cannot hold)
            log.exception("cannot build outputs topic=%s partition=%d offset=%d", work.tp[0], work.tp[1],
                          work.offset)
            work.records.clear()
            try:
                self._outputs.dead_letter(work, PoisonError(ErrorType.INTERNAL_ERROR,
                                                            f"cannot build outputs: {type(exc).__name__}: {exc}"))
            except RetryableError as outage:
                work.records.clear()
                self._waiting.hold(work, "outputs", str(outage), time.monotonic())
                return
            except Exception as exc2:  # noqa: BLE001
                self._fatal = FatalError(f"cannot dead-letter topic={work.tp[0]} partition={work.tp[1]} "
                                         f"offset={work.offset}: {type(exc2).__name__}: {exc2}")
                return
        self._delivery.complete(work)

    def _retry_waiting(self, now: float) -> None:
        """Try the oldest event held by an outage; if it goes through, the others follow."""
        waiter = self._waiting.due(now)
        if waiter is None:
            return
        held = len(self._waiting)
        self._resume(waiter.work, waiter.step, now)
        if len(self._waiting) > held:  # still failing: it is waiting again, and so are the others
            return
        for w in self._waiting.release():
            self._resume(w.work, w.step, now)

    def _resume(self, work: Work, step: str, now: float) -> None:
        if not self._ledger.holds(work):
            return  # revoked or rewound meanwhile: consumed again
        if step == "stages":
            self._run_stages([work], now)
        else:
            self._finish(work)

    # ---- callbacks from the consumer thread ------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self._assigned_at = time.monotonic()  # idle counts from the latest assignment change (until_idle)
        self._flow.assigned(consumer, partitions)
        log.info("assigned partitions=%s", _fmt(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._on_loop(self._revoke(keys), f"revoke of {_fmt(partitions)}")
        self._unassigned(keys)
        log.info("revoked partitions=%s", _fmt(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._on_loop(self._lose(keys), f"loss of {_fmt(partitions)}")
        self._unassigned(keys)
        log.warning("lost partitions=%s (not committed)", _fmt(partitions))

    def _unassigned(self, keys: list[TopicPartitionKey]) -> None:
        """Another member reports their lag now: a stale value here would be counted twice."""
        self.assigned -= set(keys)
        if self._lanes is not None:
            self._lanes.revoked(keys)
        # until_idle: work given up here (uncommitted, dropped in flight) is read again after the rejoin,
        # so the time before it does not count as idle.
        self._assigned_at = time.monotonic()
        for topic, partition in keys:
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(topic, str(partition))
        for topic in {t for t, _ in keys} - {t for t, _ in self.assigned}:
            with contextlib.suppress(KeyError):
                self._metrics.pending_work.remove(topic)

    # How long a rebalance callback waits for the loop to finish its part. Past it the rebalance goes on
    # (the loop's part still completes later): a callback that raised would stop the consumer.
    callback_bound_s = 60.0

    def _on_loop(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        assert self._loop is not None and self._consumer is not None
        if not self._loop.is_running():
            coro.close()
            return
        if not self._consumer.run_on_loop(coro, self._loop, self.callback_bound_s):
            log.error("%s did not finish within %g s (the loop was blocked: a commit or flush waiting on the "
                      "broker); the rebalance goes on without it, and the next owner labels any event it did not "
                      "see committed again", what, self.callback_bound_s)

    async def _revoke(self, keys: list[TopicPartitionKey]) -> None:
        self._waiting.drop(keys)
        try:
            self._delivery.revoke(keys)
        except FatalError as exc:
            self._fatal = exc
            self._ledger.drop(keys)

    async def _lose(self, keys: list[TopicPartitionKey]) -> None:
        self._waiting.drop(keys)
        try:
            self._delivery.lose(keys)
        except FatalError as exc:
            self._fatal = exc
            self._ledger.drop(keys)

    def _stats(self, raw: str) -> None:
        """librdkafka statistics (consumer thread): per-partition lag for the lag gauge, and per topic
        the pending work (lag x recent model seconds per event) for autoscaling on work."""
        per_topic: dict[str, int] = {}
        for topic, part, lag in lags_from_stats(raw):
            if (topic, part) in self.assigned:
                self._metrics.consumer_lag.labels(topic, str(part)).set(lag)
                per_topic[topic] = per_topic.get(topic, 0) + lag
        cost = self._metrics.work_rate.per_event()
        if cost is not None:
            for topic, lag in per_topic.items():
                self._metrics.pending_work.labels(topic).set(round(lag * cost, 3))

    def _kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = KafkaException(err)
            log.error("fatal kafka error: %s", err)
            return
        # librdkafka retries these itself and logs each attempt; say it once per code per 30 s.
        self._kafka_log.log(logging.WARNING, err.code(), "kafka error (librdkafka keeps retrying): %s", err)


def _fmt(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}[{p.partition}]" for p in partitions) or "-"
