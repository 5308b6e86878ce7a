"""The two delivery strategies over one :class:`~streams.engine.delivery.ledger.Ledger` (the commit
protocol they follow, step by step, is in :mod:`streams.engine.delivery`).

A strategy is bound to its consumer once, by :meth:`Delivery.start`, before the pipeline subscribes;
every later call commits, rewinds or reads group metadata through that consumer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from streams.engine.delivery.ledger import Ledger
from streams.engine.work import OutRecord, TopicPartitionKey, Work
from streams.errors import FatalError
from streams.kafka.producer import OutputProducer
from streams.ops import failpoints

log = logging.getLogger(__name__)

Consumer = Any  # confluent_kafka.Consumer, or a test double with the same methods


class Delivery:
    """What the pipeline calls; :class:`AtLeastOnce` and :class:`ExactlyOnce` implement it."""

    def __init__(self, ledger: Ledger, producer: OutputProducer, *, commit_interval_s: float) -> None:
        self.ledger = ledger
        self._producer = producer
        self._interval = commit_interval_s
        self._last_commit = time.monotonic()
        self._consumer: Consumer | None = None
        self.flush_timeout_s = 5.0  # how long a revoke waits for acknowledgements (less at shutdown)

    @property
    def failure(self) -> KafkaException | None:
        """An output was not delivered: the pipeline must stop without committing past its event."""
        return self._producer.failure

    @property
    def consumer(self) -> Consumer:
        """The consumer bound by :meth:`start`, whose offsets this strategy commits."""
        if self._consumer is None:
            raise RuntimeError("delivery not started: call start(consumer) first")
        return self._consumer

    def start(self, consumer: Consumer) -> None:
        """Bind the consumer and prepare the producer (blocking: call it off the event loop)."""
        self._consumer = consumer

    def complete(self, work: Work) -> None:
        """The event is decided and ``work.records`` holds all its outputs."""
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Between polls: serve what is due, commit every ``commit_interval_s``."""
        raise NotImplementedError

    def send_now(self, work: Work, record: OutRecord) -> None:
        """Produce one record for an event that is not settled yet (a deadline decision), under the
        same guarantee, without settling the event: at-least-once at once; exactly-once in the open
        transaction, which commits at the next commit (a rewind consumes the event again, and the
        record is written again with it)."""
        raise NotImplementedError

    def revoke(self, keys: list[TopicPartitionKey]) -> None:
        """Partitions are being revoked: commit what is settled for them, drop the rest."""
        raise NotImplementedError

    def lose(self, keys: list[TopicPartitionKey]) -> None:
        """Partitions were lost (another member may own them already): drop without committing."""
        self.ledger.drop(keys)

    def awaiting_acks(self) -> bool:
        """Delivery reports are outstanding (the report pump serves them)."""
        return False

    def serve_acks(self) -> None:
        """Run the delivery reports that are due."""

    async def drain(self, deadline: float) -> None:
        """Shutdown: wait (until ``deadline``) for the events in flight to settle."""
        while self.ledger.count and time.monotonic() < deadline:
            self.serve_acks()
            await asyncio.sleep(0.02)

    def close(self, deadline: float, *, commit: bool) -> None:
        """Shutdown: a last commit of what settled (unless ``commit`` is False: a fatal error)."""
        raise NotImplementedError

    def _due(self, now: float) -> bool:
        if now - self._last_commit < self._interval:
            return False
        self._last_commit = now
        return True


class AtLeastOnce(Delivery):
    """Produce as soon as decided; commit contiguous watermarks of acknowledged events."""

    def complete(self, work: Work) -> None:
        records = work.records
        if not records:
            self.ledger.settle(work)
            return
        left = [len(records)]
        for rec in records:
            key = rec.key if rec.key is not None else work.key
            self._producer.send(rec.topic, key, rec.value, self._acker(work, rec.count, left))

    def _acker(self, work: Work, count: Callable[[], None] | None, left: list[int]) -> Callable[[], None]:
        def acked() -> None:
            if count is not None:
                count()
            left[0] -= 1
            if left[0] == 0:
                self.ledger.settle(work)
        return acked

    def send_now(self, work: Work, record: OutRecord) -> None:
        self._producer.send(record.topic, record.key if record.key is not None else work.key, record.value,
                            record.count)

    def awaiting_acks(self) -> bool:
        return self._producer.pending() > 0

    def serve_acks(self) -> None:
        self._producer.poll(0)

    def tick(self, now: float) -> None:
        self._producer.poll(0)
        if self._due(now):
            self._commit(self.ledger.take_commits(), asynchronous=True)

    def revoke(self, keys: list[TopicPartitionKey]) -> None:
        self._producer.flush(self.flush_timeout_s)  # acknowledgements of the revoked partitions' records settle them
        # Synchronous, inside the rebalance callback (the consumer thread carries the call out:
        # streams.engine.loop_consumer), as Kafka's and librdkafka's documentation recommend: the
        # member rejoins only after the coordinator has the positions, so the next owner starts from
        # them, and a failed commit is logged here (the next owner then labels those events again:
        # duplicates, never a gap).
        self._commit(self.ledger.take_commits(keys), asynchronous=False)
        self.ledger.drop(keys)

    def close(self, deadline: float, *, commit: bool) -> None:
        remaining = self._producer.flush(max(0.0, deadline - time.monotonic()) + 1.0)
        if remaining:
            log.error("shutdown with %d outputs unacknowledged: their events stay uncommitted", remaining)
        if commit:
            self._commit(self.ledger.take_commits(), asynchronous=False)

    def _commit(self, positions: dict[TopicPartitionKey, int], *, asynchronous: bool) -> None:
        if not positions:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            self.ledger.uncommitted(positions)
            log.warning("commit failed (retried with the next commit) error=%s", exc)


class ExactlyOnce(Delivery):
    """Release in offset order into a transaction; commit records and offsets atomically."""

    def __init__(self, ledger: Ledger, producer: OutputProducer, *, commit_interval_s: float,
                 auto_offset_reset: str) -> None:
        super().__init__(ledger, producer, commit_interval_s=commit_interval_s)
        self._reset = auto_offset_reset
        self._decided: set[Work] = set()  # decided, waiting for the older events of their partition
        self._counts: list[Callable[[], None]] = []  # metrics of records in the open transaction
        self._dirty = False  # the open transaction holds records or offsets
        self._committing = False  # a commit failed retriably: retried next tick, nothing produced meanwhile
        self._late: list[tuple[Work, OutRecord]] = []  # send_now() while a commit is retried
        self.aborts = 0

    def start(self, consumer: Consumer) -> None:
        super().start(consumer)
        try:
            self._producer.init_transactions(30)  # also aborts a transaction left open by a crashed predecessor
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise FatalError(f"cannot start transactions: {exc}") from exc

    def complete(self, work: Work) -> None:
        self._decided.add(work)  # released in offset order by _release()

    def send_now(self, work: Work, record: OutRecord) -> None:
        if self._committing:  # a commit is being retried: nothing joins the transaction meanwhile
            self._late.append((work, record))
            return
        self._producer.send(record.topic, record.key if record.key is not None else work.key, record.value, None)
        if record.count is not None:
            self._counts.append(record.count)
        self._dirty = True

    def tick(self, now: float) -> None:
        self._release()
        self._producer.poll(0)
        if self._committing or (self._due(now) and self._dirty):
            self._commit()

    def revoke(self, keys: list[TopicPartitionKey]) -> None:
        """Commit the transaction (offsets travel in it: all partitions at once). If it cannot be
        committed now, abort it: the revoked partitions' records must not become visible later under
        a generation that no longer owns them; the kept partitions are rewound and consumed again."""
        self._release()
        if self._dirty and not self._commit() and self._dirty:
            self._abort_and_rewind(skip=keys)
        self._drop(keys)

    def lose(self, keys: list[TopicPartitionKey]) -> None:
        """The open transaction may hold records of the lost partitions, whose offsets this member
        can no longer commit: abort it and rewind the partitions still owned."""
        if self._dirty or self._committing:
            self._abort_and_rewind(skip=keys)
        self._drop(keys)

    async def drain(self, deadline: float) -> None:
        while self.ledger.count and time.monotonic() < deadline:
            self._release()
            await asyncio.sleep(0.02)
        self._release()

    def close(self, deadline: float, *, commit: bool) -> None:
        if commit and (self._dirty or self._committing) and self._commit():
            return
        try:
            self._producer.abort_transaction(10)
        except KafkaException as exc:
            log.warning("abort on close failed: %s", exc)

    def _release(self) -> None:
        if self._late and not self._committing:
            late, self._late = self._late, []
            for work, record in late:
                if self.ledger.holds(work):  # else dropped meanwhile: consumed again, and written again
                    self.send_now(work, record)
        decided = self._decided
        if not decided or self._committing:
            return
        for tp in self.ledger.partitions():
            while (head := self.ledger.oldest(tp)) is not None and head in decided:
                decided.discard(head)
                for rec in head.records:
                    self._producer.send(rec.topic, rec.key if rec.key is not None else head.key, rec.value, None)
                    if rec.count is not None:
                        self._counts.append(rec.count)
                self.ledger.settle(head)
                self._dirty = True

    def _commit(self) -> bool:
        """Commit the open transaction with the settled positions. A retriable failure is tried
        again at the next tick (never by sleeping on the event loop); an abortable one aborts and
        rewinds; anything else is fatal. True when committed."""
        producer = self._producer
        try:
            if not self._committing:
                positions = self.ledger.take_commits()
                if positions:
                    offsets = [TopicPartition(t, part, pos) for (t, part), pos in positions.items()]
                    try:
                        producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
                    except KafkaException:
                        self.ledger.uncommitted(positions)
                        raise
                    failpoints.stop_here("eos-offsets-sent")  # the crash tests kill here: both or neither
            producer.commit_transaction(30)
        except KafkaException as exc:
            err = exc.args[0]
            if getattr(err, "txn_requires_abort", lambda: False)():
                log.warning("transaction aborted, rewinding to committed offsets error=%s", err)
                self._abort_and_rewind()
                return False
            if err.retriable():
                self._committing = True
                log.warning("transaction commit failed, retried at the next tick error=%s", err)
                return False
            raise FatalError(f"transaction failed: {err}") from exc
        for count in self._counts:
            count()
        self._counts.clear()
        self._dirty = self._committing = False
        producer.begin_transaction()
        return True

    def _abort_and_rewind(self, skip: Iterable[TopicPartitionKey] = ()) -> None:
        """Abort the open transaction, drop every event in flight, and seek each assigned partition
        (but ``skip``: revoked or lost) back to its committed offset to consume it again."""
        self.aborts += 1
        try:
            self._producer.abort_transaction(30)
        except KafkaException as exc:
            raise FatalError(f"cannot abort transaction: {exc}") from exc
        self._counts.clear()
        self._dirty = self._committing = False
        self._drop(self.ledger.partitions())
        gone = set(skip)
        consumer = self.consumer
        kept = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in gone]
        if kept:
            default = OFFSET_BEGINNING if self._reset == "earliest" else OFFSET_END
            for tp in consumer.committed(kept, timeout=10):
                consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else default))
        self._producer.begin_transaction()

    def _drop(self, keys: Iterable[TopicPartitionKey]) -> None:
        gone = set(keys)
        self.ledger.drop(gone)
        self._decided = {w for w in self._decided if w.tp not in gone}
        self._late = [(w, r) for w, r in self._late if w.tp not in gone]
