"""Eight faust-streaming 0.15 defects that lose, re-read or duplicate labels or hang a shutdown,
worked around in place.

Each was found with probes on a real broker (docs/interventions.md, "faust-streaming on the
broker") and has an integration test that fails without its fix. ``apply()`` is idempotent; the
escalation service calls it at import.

1. **Seek after resume** (``Recovery.on_recovery_completed`` and ``Recovery._resume_streams``).
   Once the tables are restored, faust resumes fetching the input partitions and only then seeks
   them to the group's committed offsets. A fetch that runs while the seek is still under way
   (the coordinator answers the offset request slowly, as under load) delivers records from
   before the seek; the seek then rewinds the fetcher's read offset, the next record of the old
   fetch looks like a jump past a hole in the log, and faust marks the "hole" as processed (its
   gap tracking, meant for transaction markers and compacted offsets). The first labels after a
   restart were committed without reaching an agent: 27 of 60 with a one-second seek, and a few
   per run in CI. Fixed by holding the input partitions paused until the seek has finished
   (``_deferring_stream_resume``; fix 8 covers a fetch that was already under way).
2. **Commit progress** (``Consumer._new_offset``). After a rebalance or a restart the fetcher can
   hand a stream some messages twice, and the consumer's list of acknowledged offsets then holds
   duplicates, and offsets below the committed one. Its commit logic takes the first run of
   consecutive offsets from that list, so each commit moves on by one or two offsets: the group's
   committed offsets fall behind for good, and every later restart reads far more again. Before
   the offset to commit is computed, the duplicates and the already-committed offsets are dropped
   from the list. Nothing else changes: an offset is still committed only once it and all before
   it are acknowledged.
3. **Transactions follow the record being processed** (``TransactionManager.send``, exactly-once
   only). faust keeps one transactional producer per (topic group, partition) of the assignment and
   commits a partition's offsets in that producer's transaction, but it sends each record through
   the producer named after the partition the record is *sent to*. A ticket read from labels
   partition 0 and sent to repartition partition 2 went into partition 2's transaction, committed
   separately from (or, with no offsets of partition 2 to commit, long after) the label's offset:
   a crash between the two lost the ticket although its label was committed, and a destination
   partition this member does not own had no producer at all. A record sent while an event is
   processed now goes through the producer of the event's own partition; a record sent outside
   one (a table's changelog write, from faust's buffer task) keeps faust's choice, which is the
   same producer because a changelog partition is its source partition.
4. **A commit finds a transaction open** (``Producer.commit_transactions``, exactly-once only).
   faust commits a transaction and begins the next one as two steps; a commit cut short between
   them (cancelled as the app stops, or failed) leaves that producer outside any transaction, and
   the next commit's ``send_offsets_to_transaction`` raises ``IllegalOperation``. At shutdown that
   broke faust's consumer stop half-way: its thread kept rejoining the group after the event loop
   had closed and the process never exited after SIGTERM (the rebalance test on Apache Kafka, one
   run in three). Now a commit first waits for a commit or abort still under way and begins a
   transaction on a producer that has none, with a warning; records cannot have been sent through
   such a producer (a send outside a transaction raises), so its offsets are committed alone.
5. **A revoked partition's table keys stay in memory** (``faust.stores.memory.Store``). The
   in-memory store maps a key to its changelog partition only for keys it *restored*, and on a
   rebalance drops only those of partitions this member no longer has. Keys written by the agents
   stay for good. Under exactly-once a revoked partition's open transaction is aborted by the next
   owner, so what the member still holds for it is state that was never committed; if the
   partition comes back (its new owner died), recovery replays the committed changelog over it and
   every key the changelog does not have keeps the aborted value. A tally marked "escalated" in an
   aborted transaction then swallowed the escalation for good: 2 of 1000 actors never escalated in
   about one run in twenty of the rebalance test. Now a changelog write records its key's partition
   too, and a rebalance drops every key of a revoked changelog partition at once, so a partition that
   comes back is restored from the committed changelog alone.
6. **Recovery under exactly-once reads nothing** (``AIOKafkaConsumerThread._highwaters``). To know
   how far to restore a changelog partition, faust asks aiokafka for its last stable offset, which
   aiokafka only knows from a fetch response for that partition; for a partition not fetched yet
   in this assignment it answers None, faust takes that as an empty changelog, and the table starts
   empty. A member given changelog partitions at a rebalance restored none of their ~300 committed
   records each (a probe: "highwater -1" in faust's recovery log), so actors whose earlier
   violations were committed never reached the threshold again: escalations lost. The high water
   is now asked of the broker (a ListOffsets request, which under read_committed answers the last
   stable offset), as faust does under at-least-once, once no transaction on those partitions is
   still ending (last stable offset = high watermark, at most ``STABLE_WAIT_S``). A commit or abort
   returns before its markers are written, and until they are, the last stable offset stops before
   that transaction: a member restoring then restored the state from before a transaction that did
   commit, read its inputs again and committed 12 escalations twice (one run of the rebalance test,
   right after the commit that preceded the rebalance).
7. **Recovery ends before it has applied what it fetched** (``Recovery._slurp_changelogs``, exactly-
   once only). Transaction markers are never delivered, so faust's restore cannot see its last
   offset arrive; it counts 5-second waits for a changelog event and, after two in a row, takes a
   changelog whose fetch position has reached the high water as done. The count survives from
   before the rebalance (no changelog event arrives between recoveries), so at the next recovery
   the first wait that ends does it, possibly while records already fetched are on their way to the
   restore; they are then skipped as already seen. The tables missed the escalations committed just
   before the rebalance, and the member escalated 12 actors again (committed twice). Now each
   recovery starts by handing the restore one placeholder event below every offset it will read
   (ignored, like any offset already seen), which resets that count: faust's two waits mean again
   what they were meant to, 10 seconds without a changelog event.
8. **A fetch crosses a rebalance** (``Consumer.getmany``, ``Consumer._set_active_tps``). faust's
   fetch runs in the consumer's thread and reads faust's set of active partitions live, while the
   event loop changes it, and aiokafka moves a partition's position as it hands records over, before
   faust decides what to do with them. Two ways that lost or stalled work under load: (a) at a
   rebalance faust pauses every partition, and aiokafka reads an *empty* set as "every partition":
   a fetch under way then took the changelog records a recovery had just seeked to, faust dropped
   them as not active, and the recovery waited for ever ("No event received for active tp ... since
   recovery start", the rebalance test on a loaded machine). The set now always holds a partition of
   no topic, so it is never empty, not even between faust's clear and update. (b) a batch fetched
   before the recovery's seek to the committed offsets was still being delivered after it, and its
   first record looked like a jump past a hole: faust's gap tracking counted the offsets in between
   as processed and committed past labels that never reached an agent (what explains 19 of 20 actors
   of one wave never escalating, at-least-once, in two full CI runs). The fetch now notes each partition's
   position as aiokafka hands the records over; a record whose partition has moved since (a seek)
   is not delivered, and is read again from where the seek put it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.types import TP

log = logging.getLogger("streams.interventions.escalate")

_MARK = "safeguard_patched"
STABLE_WAIT_S = 30.0  # how long recovery waits for a transaction that is ending to finish (fix 6)
_HOLD = TP("safeguard-streams-hold", -1)  # always in faust's set of active partitions (fix 8)


def apply() -> None:
    """Install the fixes (once). A faust whose internals moved is refused by name rather than
    run unpatched."""
    from faust.stores.memory import Store
    from faust.tables.base import Collection
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer, TransactionManager
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer

    needed = [(Recovery, "on_recovery_completed"), (Recovery, "_resume_streams"), (Consumer, "_new_offset"),
              (Consumer, "perform_seek"), (Consumer, "resume_partitions"), (Consumer, "_get_active_partitions"),
              (Consumer, "_is_changelog_tp"), (TransactionManager, "send"), (Producer, "commit_transactions"),
              (Collection, "send_changelog"), (Store, "on_rebalance"), (AIOKafkaConsumerThread, "_highwaters"),
              (Recovery, "_build_offsets"), (Consumer, "_set_active_tps"), (Consumer, "_wait_next_records"),
              (Consumer, "getmany"), (AIOKafkaConsumerThread, "_fetch_records")]
    missing = [f"{cls.__name__}.{name}" for cls, name in needed if not hasattr(cls, name)]
    if missing:
        import faust

        raise RuntimeError(f"faust-streaming {faust.__version__} lacks {', '.join(missing)}: the escalation "
                           "service's fixes are written for faust-streaming 0.15 (docs/interventions.md)")
    _seek_before_resume()
    _active_set_never_empty()
    _fetch_never_crosses_a_seek()
    _commit_progress()
    _transactions_follow_the_record()
    _commits_find_a_transaction_open()
    _revoked_keys_leave_memory()
    _recovery_asks_the_broker_how_far()
    _recovery_waits_count_from_its_start()


def _seek_before_resume() -> None:
    from faust.tables.recovery import Recovery

    for name in ("on_recovery_completed", "_resume_streams"):
        original = getattr(Recovery, name)
        if getattr(original, _MARK, False):
            continue
        fixed = _deferring_stream_resume(original)
        setattr(fixed, _MARK, True)
        setattr(Recovery, name, fixed)


def _deferring_stream_resume(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """``method`` with the consumer's resume of input (non-changelog) partitions held back until
    its own ``perform_seek`` has returned; if the method resumes them without seeking (an empty
    assignment), they are resumed when it returns. A seek another task makes meanwhile (faust's
    fetcher seeks back to the committed offsets when a fetch returns while the flow is stopped)
    releases nothing."""

    @functools.wraps(method)
    async def run(self: Any, *args: Any, **kwargs: Any) -> None:
        consumer = self.app.consumer
        resume, seek = consumer.resume_partitions, consumer.perform_seek
        owner = asyncio.current_task()
        held: set[Any] = set()

        def resume_partitions(tps: Iterable[Any]) -> None:
            tps = set(tps)
            inputs = {tp for tp in tps if not consumer._is_changelog_tp(tp)}
            held.update(inputs)
            if tps - inputs:
                resume(tps - inputs)

        def release() -> None:
            if held:
                resume(set(held))
                held.clear()

        async def perform_seek() -> None:
            await seek()  # while the input partitions are held: nothing fetched from before it is delivered
            if asyncio.current_task() is owner:
                release()

        consumer.resume_partitions, consumer.perform_seek = resume_partitions, perform_seek
        try:
            await method(self, *args, **kwargs)
        finally:
            del consumer.resume_partitions, consumer.perform_seek  # the class's methods again
            release()

    return run


def _active_set_never_empty() -> None:
    from faust.transport.consumer import Consumer

    if getattr(Consumer._get_active_partitions, _MARK, False):
        return
    get_active = Consumer._get_active_partitions

    def _get_active_partitions(self: Any) -> set[Any]:
        tps: set[Any] = get_active(self)
        tps.add(_HOLD)
        return tps

    def _set_active_tps(self: Any, tps: Iterable[Any]) -> set[Any]:
        from faust.transport.consumer import ensure_TPset

        if self._active_partitions is None:
            self._active_partitions = {_HOLD}
        active: set[Any] = self._active_partitions
        wanted = (ensure_TPset(tps) - self._paused_partitions) | {_HOLD}
        active.add(_HOLD)  # never empty, not even for a moment: the consumer thread reads it live
        active.intersection_update(wanted)
        active.update(wanted)
        return active

    for fixed in (_get_active_partitions, _set_active_tps):
        setattr(fixed, _MARK, True)
    Consumer._get_active_partitions = _get_active_partitions  # type: ignore[method-assign]
    Consumer._set_active_tps = _set_active_tps  # type: ignore[method-assign]


class _Fetched(dict):
    """A fetch's records, with each partition's fetch position right after they were taken."""

    positions: dict[Any, int | None]


_fetch_records_of: Callable[..., Awaitable[Any]]  # aiokafka's fetch as faust calls it, unpatched


def _fetch_never_crosses_a_seek() -> None:
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(Consumer.getmany, _MARK, False):
        return
    global _fetch_records_of
    _fetch_records_of = AIOKafkaConsumerThread._fetch_records
    wait_next, getmany = Consumer._wait_next_records, Consumer.getmany

    async def _fetch_records(self: Any, consumer: Any, active_partitions: Any, timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        records = await _fetch_records_of(self, consumer, active_partitions, timeout=timeout, max_records=max_records)
        if not records:
            return records
        fetched = _Fetched(records)  # no await since aiokafka handed them over: no seek in between
        fetched.positions = {tp: _position(consumer, tp) for tp in records}
        return fetched

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        records, active = await wait_next(self, timeout)
        self._safeguard_fetched = getattr(records, "positions", None)
        return records, active

    async def _getmany(self: Any, timeout: float) -> Any:
        stale: Counter[Any] = Counter()
        async for tp, message in getmany(self, timeout):
            if _moved(self, tp):
                stale[tp] += 1
                continue
            yield tp, message
        for tp, n in stale.items():
            log.info("discarded %d records of %s fetched before a seek moved the partition (read again from "
                     "where the seek put it)", n, tp)

    for fixed in (_fetch_records, _wait_next_records, _getmany):
        setattr(fixed, _MARK, True)
    AIOKafkaConsumerThread._fetch_records = _fetch_records  # type: ignore[method-assign]
    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
    Consumer.getmany = _getmany  # type: ignore[method-assign]


def _moved(consumer: Any, tp: Any) -> bool:
    """Whether ``tp``'s fetch position changed since faust's consumer took its last batch (a seek
    since: what is left of the batch for ``tp`` comes from before it)."""
    fetched = getattr(consumer, "_safeguard_fetched", None)
    if fetched is None or tp not in fetched:
        return False
    client = consumer._thread._consumer
    return client is None or _position(client, tp) != fetched[tp]


def _position(consumer: Any, tp: Any) -> int | None:
    """aiokafka's fetch position of ``tp`` (None: not assigned, or no position yet)."""
    assignment = consumer._subscription.subscription and consumer._subscription.subscription.assignment
    if assignment is None or tp not in assignment.tps:
        return None
    position: int | None = assignment.state_value(tp)._position
    return position


def _commit_progress() -> None:
    from faust.transport.consumer import Consumer

    original = Consumer._new_offset
    if getattr(original, _MARK, False):
        return

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        if acked:
            committed = self._committed_offset[tp]
            kept = sorted({o for o in acked if committed is None or o >= committed})
            if len(kept) != len(acked):
                acked[:] = kept
        return original(self, tp)

    setattr(_new_offset, _MARK, True)
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


def _transactions_follow_the_record() -> None:
    from faust import current_event
    from faust.transport.consumer import TransactionManager

    original = TransactionManager.send
    if getattr(original, _MARK, False):
        return

    async def send(self: Any, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any, *, transactional_id: str | None = None) -> Any:
        event = current_event()
        if event is None:
            return await original(self, topic, key, value, partition, timestamp, headers,
                                  transactional_id=transactional_id)
        source = event.message.tp
        group = self.app.assignor.group_for_topic(source.topic)
        return await self.producer.send(topic, key, value, self.consumer.key_partition(topic, key, partition),
                                        timestamp, headers,
                                        transactional_id=f"{self.app.conf.id}-{group}-{source.partition}")

    setattr(send, _MARK, True)
    TransactionManager.send = send  # type: ignore[method-assign]


def _commits_find_a_transaction_open() -> None:
    from faust.transport.drivers.aiokafka import Producer

    original = Producer.commit_transactions
    if getattr(original, _MARK, False):
        return

    async def commit_transactions(self: Any, tid_to_offset_map: Any, group_id: str,
                                  start_new_transaction: bool = True) -> None:
        for tid in tid_to_offset_map:
            producer = self._transaction_producers.get(tid)
            if producer is None or producer._txn_manager.is_in_transaction():
                continue
            async with self._trn_locks[tid]:
                manager = producer._txn_manager
                waiter = manager.wait_for_transaction_end()
                if waiter is not None and not waiter.done():  # a commit or abort cut short: let it end
                    await asyncio.shield(waiter)
                if not manager.is_in_transaction():
                    log.warning("transaction %s was not open at a commit (state %s, a commit cut short): "
                                "beginning one for its offsets", tid, manager.state.name)
                    await producer.begin_transaction()
        await original(self, tid_to_offset_map, group_id, start_new_transaction=start_new_transaction)

    setattr(commit_transactions, _MARK, True)
    Producer.commit_transactions = commit_transactions  # type: ignore[method-assign]


def _revoked_keys_leave_memory() -> None:
    from faust.stores.memory import Store
    from faust.tables.base import Collection

    send_changelog = Collection.send_changelog
    if getattr(send_changelog, _MARK, False):
        return

    def send_changelog_noting_the_partition(self: Any, partition: int | None, key: Any, value: Any,
                                            *args: Any, **kwargs: Any) -> Any:
        fut = send_changelog(self, partition, key, value, *args, **kwargs)
        store = self.data
        if isinstance(store, Store):
            if partition is None:  # faust's partitioner chose it (eagerly: it is on the message already)
                partition = getattr(getattr(fut, "message", None), "partition", None)
            if value is None:
                store._key_partition.pop(key, None)
            elif partition is not None:
                store._key_partition[key] = partition
        return fut

    on_rebalance = Store.on_rebalance

    async def dropping_revoked_keys(self: Any, assigned: Any, revoked: Any, newly_assigned: Any,
                                    generation_id: int = 0) -> None:
        topic = self.table.changelog_topic.get_topic_name()
        gone = {tp.partition for tp in revoked if tp.topic == topic}
        if gone:
            stale = [key for key, partition in self._key_partition.items() if partition in gone]
            for key in stale:
                self.data.pop(key, None)
                del self._key_partition[key]
        await on_rebalance(self, assigned, revoked, newly_assigned, generation_id)

    for fixed in (send_changelog_noting_the_partition, dropping_revoked_keys):
        setattr(fixed, _MARK, True)
    Collection.send_changelog = send_changelog_noting_the_partition  # type: ignore[method-assign]
    Store.on_rebalance = dropping_revoked_keys  # type: ignore[method-assign]


def _recovery_asks_the_broker_how_far() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread._highwaters, _MARK, False):
        return

    async def _highwaters(self: Any, partitions: list[Any]) -> Any:
        # end_offsets sends ListOffsets with the consumer's isolation level: the last stable offset
        # under read_committed, the high watermark otherwise
        consumer = self._ensure_consumer()
        stable = await consumer.end_offsets(partitions)
        if not self.consumer.in_transaction:
            return stable
        deadline = time.monotonic() + STABLE_WAIT_S
        while True:
            high = await _high_watermarks(consumer, partitions)
            unsettled = sorted(f"{tp.topic}[{tp.partition}] {stable.get(tp)}/{high[tp]}" for tp in high
                               if stable.get(tp) is not None and stable[tp] < high[tp])
            if not unsettled:
                return stable
            if time.monotonic() > deadline:
                log.warning("changelog partitions still hold an unfinished transaction after %.0fs (last stable/high "
                            "watermark): %s; restoring up to the last stable offset", STABLE_WAIT_S,
                            ", ".join(unsettled))
                return stable
            await asyncio.sleep(0.05)
            stable = await consumer.end_offsets(partitions)

    setattr(_highwaters, _MARK, True)
    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]


async def _high_watermarks(consumer: Any, partitions: list[Any]) -> dict[Any, int]:
    """The partitions' high watermarks (ListOffsets, read_uncommitted), whatever the consumer's own
    isolation level: aiokafka asks only with its own."""
    from collections import defaultdict

    from aiokafka.protocol.offset import OffsetRequest
    from aiokafka.structs import TopicPartition

    client = consumer._client
    by_leader: dict[int, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for tp in partitions:
        by_leader[client.cluster.leader_for_partition(tp)][tp.topic].append((tp.partition, -1))  # -1: the end
    found: dict[Any, int] = {}
    for node, topics in by_leader.items():
        response = await client.send(node, OffsetRequest(-1, 0, list(topics.items())))
        for topic, answers in response.topics:
            for partition, error_code, *rest in answers:
                if error_code == 0:
                    found[TopicPartition(topic, partition)] = rest[-1]  # (timestamp, offset) from v1 on
    return found


class _Placeholder:
    """A changelog event below every offset a restore reads: faust's restore skips it as already
    seen, and counts it as an event (fix 7)."""

    def __init__(self, tp: Any) -> None:
        self.message = type("Message", (), {"tp": tp, "offset": -2})()


def _recovery_waits_count_from_its_start() -> None:
    from faust.tables.recovery import Recovery

    original = Recovery._build_offsets
    if getattr(original, _MARK, False):
        return

    async def _build_offsets(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(self, consumer, tps, destination, title)
        if title == "active" and tps and self.app.in_transaction:  # the offsets a restore starts from are set
            self.tables.changelog_queue.put_nowait(_Placeholder(next(iter(tps))))

    setattr(_build_offsets, _MARK, True)
    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]
