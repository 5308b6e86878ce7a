"""The commit protocol: when an event's outputs count as delivered and its offset may be committed.

Everything about per-partition order, settlement, watermarks and commits is here; the pipeline only
calls :class:`Delivery` (``complete`` a finished event, ``tick`` between polls, ``revoke``/``lose``
from the rebalance callbacks, ``drain``/``close`` at shutdown). Both strategies run on the
pipeline's event-loop thread and share one :class:`Ledger`.

**At-least-once** (:class:`AtLeastOnce`, the default):
  1. Every output record of an event (labels, reasoning records, dead letters) is produced as soon
     as the event is decided, in whatever order events finish.
  2. The event is settled when the broker has acknowledged all of its records (delivery reports).
     A record the producer gives up on is fatal (:attr:`Delivery.failure`): its event never
     settles, so nothing at or after it is committed.
  3. Settled events advance their partition's contiguous low watermark (:class:`Ledger`): one slow
     event holds the watermark, never lets it skip.
  4. Watermarks are committed every ``batching.commit_interval_s``, on revoke (synchronously, for
     the revoked partitions) and on shutdown.
  A crash re-delivers everything after the last commit: duplicates (same ``label_id``), never a gap.

**Exactly-once** (:class:`ExactlyOnce`, ``delivery: exactly_once``):
  1. Decided events wait in their partition's order; only the oldest event of each partition is
     released, so records leave in offset order per partition.
  2. Released records are produced inside the open transaction, and the event settles (the
     transaction will carry its offset). The stable ``transactional.id`` fences a zombie of the
     same instance; the consumer group metadata fences stale generations.
  3. Every ``batching.commit_interval_s``, on revoke and on shutdown the settled positions are added
     with ``send_offsets_to_transaction`` and the transaction is committed: labels and offsets become
     visible together, to ``read_committed`` readers exactly once.
  4. A commit that fails abortably is aborted, every assigned partition is rewound to its committed
     offset, and all work in flight is dropped and consumed again.
  Inference happens outside transactions, so they stay short relative to ``transaction.timeout.ms``
  however long the model reasons.

Both: revoke commits what is settled for the revoked partitions, then drops their unfinished work
(its tasks are cancelled; the next owner consumes it again); a lost partition is dropped without a
commit (another member may own it already).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from streams.engine.work import TopicPartitionKey, Work
from streams.errors import FatalError
from streams.kafka.producer import OutputProducer

log = logging.getLogger(__name__)

Consumer = Any  # confluent_kafka.Consumer, or a test double with the same methods


class _Partition:
    """One partition's consumed, unsettled events in offset order, and its watermark."""

    __slots__ = ("works", "done", "position", "committed")

    def __init__(self) -> None:
        self.works: OrderedDict[int, Work] = OrderedDict()  # the oldest is never settled (see settle)
        self.done: set[int] = set()  # settled offsets above the watermark (held by an older one)
        self.position: int | None = None  # next offset to commit: one past the settled prefix
        self.committed: int | None = None  # the position last handed out by take_commits


class Ledger:
    """Every event consumed and not settled yet, by partition in offset order (the one index), and
    each partition's commit position: one past the longest settled prefix (contiguous low
    watermark). Offsets need not be contiguous (compaction, transaction markers)."""

    def __init__(self, on_settled: Callable[[Work], None] | None = None) -> None:
        self._parts: dict[TopicPartitionKey, _Partition] = {}
        self.on_settled = on_settled
        self.count = 0  # events held and not settled

    def add(self, work: Work) -> None:
        """Register a consumed event; offsets of a partition must arrive in increasing order."""
        part = self._parts.get(work.tp)
        if part is None:
            part = self._parts[work.tp] = _Partition()
        elif part.works and work.offset <= next(reversed(part.works)):
            raise ValueError(f"offset {work.offset} of {work.tp} added out of order")
        part.works[work.offset] = work
        self.count += 1

    def holds(self, work: Work) -> bool:
        """The event is still unsettled here (not settled, revoked or rewound meanwhile)."""
        part = self._parts.get(work.tp)
        return part is not None and part.works.get(work.offset) is work and work.offset not in part.done

    def settle(self, work: Work) -> bool:
        """The event is delivered; False (and nothing changes) if it is no longer held."""
        if not self.holds(work):
            return False
        part = self._parts[work.tp]
        part.done.add(work.offset)
        self.count -= 1
        works, done = part.works, part.done
        while works:
            offset = next(iter(works))
            if offset not in done:
                break
            works.popitem(last=False)
            done.discard(offset)
            part.position = offset + 1
        if self.on_settled is not None:
            self.on_settled(work)
        return True

    def oldest(self, tp: TopicPartitionKey) -> Work | None:
        """The oldest unsettled event of a partition (what holds its watermark)."""
        part = self._parts.get(tp)
        if part is None or not part.works:
            return None
        return next(iter(part.works.values()))

    def partitions(self) -> list[TopicPartitionKey]:
        return list(self._parts)

    def in_flight(self, tp: TopicPartitionKey) -> int:
        part = self._parts.get(tp)
        return len(part.works) - len(part.done) if part is not None else 0

    def take_commits(self, keys: Iterable[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Positions that moved since they were last taken (of ``keys``, default all), to commit."""
        out: dict[TopicPartitionKey, int] = {}
        for key in self._parts if keys is None else keys:
            part = self._parts.get(key)
            if part is not None and part.position is not None and part.position != part.committed:
                part.committed = out[key] = part.position
        return out

    def uncommitted(self, positions: dict[TopicPartitionKey, int]) -> None:
        """A commit of ``positions`` failed: hand them out again with the next :meth:`take_commits`."""
        for key, position in positions.items():
            part = self._parts.get(key)
            if part is not None and part.committed == position:
                part.committed = None

    def positions(self, keys: Iterable[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Current commit positions (moved or not) of ``keys`` (default: all)."""
        selected = self._parts if keys is None else keys
        return {k: p for k in selected if k in self._parts and (p := self._parts[k].position) is not None}

    def drop(self, keys: Iterable[TopicPartitionKey]) -> int:
        """Forget partitions: cancel their unsettled work, ignore its late completions. Returns how
        many events were dropped."""
        dropped = 0
        for key in list(keys):
            part = self._parts.pop(key, None)
            if part is None:
                continue
            for offset, work in part.works.items():
                if offset not in part.done:
                    work.cancel()
                    dropped += 1
        self.count -= dropped
        return dropped

    def drop_all(self) -> int:
        return self.drop(list(self._parts))


class Delivery:
    """What the pipeline calls; :class:`AtLeastOnce` and :class:`ExactlyOnce` implement it."""

    def __init__(self, ledger: Ledger, producer: OutputProducer, *, commit_interval_s: float) -> None:
        self.ledger = ledger
        self._producer = producer
        self._interval = commit_interval_s
        self._last_commit = time.monotonic()

    @property
    def failure(self) -> KafkaException | None:
        """An output was not delivered: the pipeline must stop without committing past its event."""
        return self._producer.failure

    def start(self) -> None:
        """Prepare the producer (blocking: call it off the event loop)."""

    def complete(self, work: Work) -> None:
        """The event is decided and ``work.records`` holds all its outputs."""
        raise NotImplementedError

    def tick(self, now: float, consumer: Consumer) -> None:
        """Between polls: serve what is due, commit every ``commit_interval_s``."""
        raise NotImplementedError

    def revoke(self, keys: list[TopicPartitionKey], consumer: Consumer) -> None:
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

    def close(self, consumer: Consumer, deadline: float, *, commit: bool) -> None:
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
            self._producer.send(rec.topic, work.key, rec.value, self._acker(work, rec.count, left))

    def _acker(self, work: Work, count: Callable[[], None] | None, left: list[int]) -> Callable[[], None]:
        def acked() -> None:
            if count is not None:
                count()
            left[0] -= 1
            if left[0] == 0:
                self.ledger.settle(work)
        return acked

    def awaiting_acks(self) -> bool:
        return self._producer.pending() > 0

    def serve_acks(self) -> None:
        self._producer.poll(0)

    def tick(self, now: float, consumer: Consumer) -> None:
        self._producer.poll(0)
        if self._due(now):
            self._commit(consumer, self.ledger.take_commits(), asynchronous=True)

    def revoke(self, keys: list[TopicPartitionKey], consumer: Consumer) -> None:
        self._producer.flush(5.0)  # acknowledgements of the revoked partitions' records settle them
        self._commit(consumer, self.ledger.take_commits(keys), asynchronous=False)
        self.ledger.drop(keys)

    def close(self, consumer: Consumer, deadline: float, *, commit: bool) -> None:
        remaining = self._producer.flush(max(0.0, deadline - time.monotonic()) + 1.0)
        if remaining:
            log.error("shutdown with %d outputs unacknowledged: their events stay uncommitted", remaining)
        if commit:
            self._commit(consumer, self.ledger.take_commits(), asynchronous=False)

    def _commit(self, consumer: Consumer, positions: dict[TopicPartitionKey, int], *, asynchronous: bool) -> None:
        if not positions:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=asynchronous)
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
        self.aborts = 0

    def start(self) -> None:
        p = self._producer.producer
        try:
            p.init_transactions(30)  # also aborts a transaction left open by a crashed predecessor
            p.begin_transaction()
        except KafkaException as exc:
            raise FatalError(f"cannot start transactions: {exc}") from exc

    def complete(self, work: Work) -> None:
        self._decided.add(work)  # released in offset order by _release()

    def tick(self, now: float, consumer: Consumer) -> None:
        self._release()
        self._producer.poll(0)
        if self._due(now) and self._dirty:
            self._commit(consumer)

    def revoke(self, keys: list[TopicPartitionKey], consumer: Consumer) -> None:
        self._release()
        if self._dirty:
            self._commit(consumer)  # offsets travel in the transaction: all partitions at once
        self._drop(keys)

    def lose(self, keys: list[TopicPartitionKey]) -> None:
        self._drop(keys)

    async def drain(self, deadline: float) -> None:
        while self.ledger.count and time.monotonic() < deadline:
            self._release()
            await asyncio.sleep(0.02)
        self._release()

    def close(self, consumer: Consumer, deadline: float, *, commit: bool) -> None:
        if commit and self._dirty:
            self._commit(consumer)
            return
        try:
            self._producer.producer.abort_transaction(10)
        except KafkaException as exc:
            log.warning("abort on close failed: %s", exc)

    def _release(self) -> None:
        decided = self._decided
        if not decided:
            return
        for tp in self.ledger.partitions():
            while (head := self.ledger.oldest(tp)) is not None and head in decided:
                decided.discard(head)
                for rec in head.records:
                    self._producer.send(rec.topic, head.key, rec.value, None)
                    if rec.count is not None:
                        self._counts.append(rec.count)
                self.ledger.settle(head)
                self._dirty = True

    def _commit(self, consumer: Consumer) -> bool:
        """Commit the open transaction with the settled positions; abort and rewind on failure."""
        p = self._producer.producer
        positions = self.ledger.take_commits()
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
        self._drop(self.ledger.partitions())
        assigned = consumer.assignment()
        if assigned:
            committed = consumer.committed(assigned, timeout=10)
            default = OFFSET_BEGINNING if self._reset == "earliest" else OFFSET_END
            for tp in committed:
                consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else default))
        p.begin_transaction()

    def _drop(self, keys: Iterable[TopicPartitionKey]) -> None:
        gone = set(keys)
        self.ledger.drop(gone)
        self._decided = {w for w in self._decided if w.tp not in gone}
