"""Delivery strategies: how finished events become produced records and committed offsets.

Both run on the pipeline's event-loop thread (see :mod:`streams.pipeline`).

:class:`AtLeastOnce` (default). Commit protocol, per event:
  1. Every output record of the event (labels, reasoning records, dead letters) is produced as soon
     as the event's inference is done, in whatever order events finish.
  2. The event is settled when the broker has acknowledged all of its records (delivery callbacks).
  3. Settled events advance their partition's contiguous low watermark (:mod:`streams.offsets`).
  4. Watermarks are committed every ``batching.commit_interval_s``, on revoke and on shutdown.
  A crash re-delivers everything after the last commit: duplicates (same ``label_id``), never a gap.

:class:`ExactlyOnce` (``delivery: exactly_once``). Commit protocol:
  1. Finished events wait in their partition's queue; only the head of each queue is released, so
     records leave in offset order per partition.
  2. Released records are produced inside the open transaction (the stable ``transactional.id``
     fences a zombie of the same instance; the consumer group metadata fences stale generations).
  3. Every ``batching.commit_interval_s`` the released positions are added with
     ``send_offsets_to_transaction`` and the transaction is committed: labels and offsets become
     visible together, to ``read_committed`` readers exactly once.
  4. A failed commit is aborted and every assigned partition is rewound to its committed offset;
     in-flight work is dropped and consumed again. On revoke the transaction is committed first.
  Inference happens outside transactions, so they stay short relative to
  ``transaction.timeout.ms`` however long the model reasons (faust's ProducerFenced failure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from streams.config import Settings
from streams.errors import FatalError
from streams.offsets import OffsetTracker
from streams.producer import OutputProducer
from streams.work import TopicPartitionKey, Work

log = logging.getLogger(__name__)


class Ledger:
    """Events consumed and not settled yet, per partition in offset order, plus their watermarks."""

    def __init__(self, on_settled: Callable[[Work], None]) -> None:
        self.tracker = OffsetTracker()
        self.works: dict[TopicPartitionKey, dict[int, Work]] = {}
        self.count = 0
        self._on_settled = on_settled

    def add(self, work: Work) -> None:
        self.tracker.add(work.key[0], work.key[1], work.offset)
        self.works.setdefault(work.key, {})[work.offset] = work
        self.count += 1

    def holds(self, work: Work) -> bool:
        return self.works.get(work.key, {}).get(work.offset) is work

    def settle(self, work: Work) -> None:
        """The event is done; ignored if its partition was revoked or rewound meanwhile."""
        if not self.holds(work):
            return
        del self.works[work.key][work.offset]
        self.count -= 1
        self.tracker.complete(work.key[0], work.key[1], work.offset)
        self._on_settled(work)

    def drop(self, keys: list[TopicPartitionKey]) -> int:
        """Forget partitions: cancel their in-flight work. Returns how many events were dropped."""
        dropped = 0
        for key in keys:
            for work in self.works.pop(key, {}).values():
                work.cancel()
                dropped += 1
        self.count -= dropped
        self.tracker.drop(keys)
        return dropped

    def drop_all(self) -> int:
        return self.drop(list(self.works))


class AtLeastOnce:
    """Produce as soon as done, commit contiguous watermarks of acknowledged events."""

    def __init__(self, settings: Settings, ledger: Ledger, producer: OutputProducer) -> None:
        self._interval = settings.batching.commit_interval_s
        self._ledger = ledger
        self._producer = producer
        self._last_commit = time.monotonic()

    def start(self) -> None:
        """Nothing to prepare for an idempotent producer."""

    def complete(self, work: Work) -> None:
        work.unacked = len(work.records)
        if not work.records:
            self._ledger.settle(work)
        for rec in work.records:
            self._producer.send(rec.topic, work.msg_key, rec.value, self._acker(work, rec.count))

    def _acker(self, work: Work, count: Callable[[], None] | None) -> Callable[[], None]:
        def acked() -> None:
            if count is not None:
                count()
            work.unacked -= 1
            if work.unacked == 0:
                self._ledger.settle(work)
        return acked

    def awaiting_acks(self) -> bool:
        return self._producer.pending() > 0

    def serve_acks(self) -> None:
        """Run the delivery callbacks that are due (settles events, see :meth:`complete`)."""
        self._producer.poll(0)

    def tick(self, now: float, consumer: Consumer) -> None:
        self._producer.poll(0)
        if now - self._last_commit >= self._interval:
            self.commit(consumer, asynchronous=True)
            self._last_commit = now

    def commit(self, consumer: Consumer, *, asynchronous: bool) -> None:
        positions = self._ledger.tracker.take_commits()
        if not positions:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed (retried with the next commit) error=%s", exc)

    def revoke(self, keys: list[TopicPartitionKey], consumer: Consumer) -> dict[TopicPartitionKey, int]:
        """Collect acknowledgements, abandon unfinished work; the caller commits the positions."""
        self._producer.flush(5.0)
        positions = self._ledger.tracker.positions(keys)
        self._ledger.drop(keys)
        return positions

    async def drain(self, deadline: float) -> None:
        while self._ledger.count and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(0.02)

    def close(self, consumer: Consumer, deadline: float, *, commit: bool) -> None:
        remaining = self._producer.flush(max(0.0, deadline - time.monotonic()) + 1.0)
        if remaining:
            log.error("shutdown with %d outputs unacknowledged: their events stay uncommitted", remaining)
        if commit:
            self.commit(consumer, asynchronous=False)


class ExactlyOnce:
    """Release in offset order into a transaction; commit records and offsets atomically."""

    def __init__(self, settings: Settings, ledger: Ledger, producer: OutputProducer) -> None:
        self._interval = settings.batching.commit_interval_s
        self._reset = settings.kafka.auto_offset_reset
        self._ledger = ledger
        self._producer = producer
        self._last_commit = time.monotonic()
        self._counts: list[Callable[[], None]] = []
        self._dirty = False
        self.aborts = 0

    def start(self) -> None:
        p = self._producer.producer
        try:
            p.init_transactions(30)  # also aborts a transaction left open by a crashed predecessor
            p.begin_transaction()
        except KafkaException as exc:
            raise FatalError(f"cannot start transactions: {exc}") from exc

    def complete(self, work: Work) -> None:
        work.ready = True  # released in offset order by tick()

    def awaiting_acks(self) -> bool:
        return False  # the transaction commit is the acknowledgement

    def serve_acks(self) -> None:
        """Nothing to serve: records carry no callbacks inside a transaction."""

    def release(self) -> None:
        for works in self._ledger.works.values():
            while works:
                head = next(iter(works.values()))
                if not head.ready:
                    break
                for rec in head.records:
                    self._producer.send(rec.topic, head.msg_key, rec.value, None)
                    if rec.count is not None:
                        self._counts.append(rec.count)
                self._ledger.settle(head)
                self._dirty = True

    def tick(self, now: float, consumer: Consumer) -> None:
        self.release()
        self._producer.poll(0)
        if now - self._last_commit >= self._interval:
            self._last_commit = now
            if self._dirty:
                self.commit(consumer)

    def commit(self, consumer: Consumer) -> bool:
        """Commit the open transaction with the released offsets; abort and rewind on failure."""
        p = self._producer.producer
        positions = self._ledger.tracker.take_commits()
        try:
            if positions:
                offsets = [TopicPartition(t, part, pos) for (t, part), pos in positions.items()]
                p.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
            self._commit_with_retry()
        except KafkaException as exc:
            err = exc.args[0]
            if getattr(err, "txn_requires_abort", lambda: False)():
                log.warning("transaction aborted, rewinding to committed offsets error=%s", err)
                self._abort_and_rewind(consumer)
                return False
            raise FatalError(f"transaction failed: {err}") from exc
        for count in self._counts:
            count()
        self._counts.clear()
        self._dirty = False
        p.begin_transaction()
        return True

    def _commit_with_retry(self) -> None:
        p = self._producer.producer
        for attempt in range(5):
            try:
                p.commit_transaction(30)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _abort_and_rewind(self, consumer: Consumer) -> None:
        p = self._producer.producer
        self.aborts += 1
        try:
            p.abort_transaction(30)
        except KafkaException as exc:
            raise FatalError(f"cannot abort transaction: {exc}") from exc
        self._counts.clear()
        self._dirty = False
        self._ledger.drop_all()
        assigned = consumer.assignment()
        if assigned:
            committed = consumer.committed(assigned, timeout=10)
            default = OFFSET_BEGINNING if self._reset == "earliest" else OFFSET_END
            for tp in committed:
                consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else default))
        p.begin_transaction()

    def revoke(self, keys: list[TopicPartitionKey], consumer: Consumer) -> dict[TopicPartitionKey, int]:
        """Commit what was released (offsets travel in the transaction), then abandon the rest."""
        self.release()
        if self._dirty:
            self.commit(consumer)
        self._ledger.drop(keys)
        return {}

    async def drain(self, deadline: float) -> None:
        while self._ledger.count and time.monotonic() < deadline:
            self.release()
            await asyncio.sleep(0.02)
        self.release()

    def close(self, consumer: Consumer, deadline: float, *, commit: bool) -> None:
        if commit and self._dirty:
            self.commit(consumer)
        else:
            try:
                self._producer.producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("abort on close failed: %s", exc)


Delivery = AtLeastOnce | ExactlyOnce

ACK_POLL_S = 0.05  # how often delivery reports are served when not batching I/O
IO_BATCH_MIN_INFLIGHT = 32  # batch I/O only when this many requests are out (latency first when quiet)


async def serve_reports(delivery: Delivery, inflight: Callable[[], int], batch_s: float) -> None:
    """Serve delivery reports on the loop, independently of the consume cadence, and batch I/O.

    Quiet: every ACK_POLL_S. Busy (``inflight()`` replica requests out): the loop sleeps ``batch_s``
    (``batching.io_batch_ms``) and then handles every response that arrived meanwhile in one turn.
    Without this the loop wakes once per response, and on this class of machine a wake-up costs more
    CPU than the response's own processing; the price is at most that long on a label that took
    seconds. Nothing waits on the loop meanwhile: sockets buffer, heartbeats run on librdkafka's threads.
    """
    while True:
        if delivery.awaiting_acks():
            delivery.serve_acks()
        if batch_s and inflight() >= IO_BATCH_MIN_INFLIGHT:
            time.sleep(batch_s)  # deliberate: the whole loop waits, see above
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # and the tasks those responses woke run before the next wait
        else:
            await asyncio.sleep(ACK_POLL_S)
