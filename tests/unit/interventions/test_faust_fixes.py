"""The faust-streaming fixes, on stand-ins: what is resumed when, what commits, which transaction a
record joins. The integration tests (tests/integration/interventions/test_escalation.py) show each
on the broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, TransactionManager
from faust.types import TP

from streams.interventions import faust_fixes

LABELS, CHANGELOG = TP("labels", 0), TP("app-tallies-changelog", 0)


class StandInConsumer:
    """The parts of faust's consumer the fix touches, recording what happened in order."""

    def __init__(self) -> None:
        self.active: set[TP] = set()
        self.events: list[tuple[str, frozenset[TP]]] = []

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    def resume_partitions(self, tps: Any) -> None:
        self.active.update(tps)
        self.events.append(("resume", frozenset(tps)))

    async def perform_seek(self) -> None:
        self.events.append(("seek, active at the time", frozenset(self.active)))
        await asyncio.sleep(0)


class App:
    def __init__(self) -> None:
        self.consumer = StandInConsumer()


async def faust_order(recovery: Any) -> None:
    """What faust 0.15's on_recovery_completed does: resume the inputs, then seek."""
    recovery.app.consumer.resume_partitions({LABELS})
    await recovery.app.consumer.perform_seek()


def test_apply_is_idempotent_and_marks_what_it_patched() -> None:
    faust_fixes.apply()
    first = (Recovery.on_recovery_completed, Recovery._resume_streams, Consumer._new_offset, TransactionManager.send)
    faust_fixes.apply()
    assert (Recovery.on_recovery_completed, Recovery._resume_streams, Consumer._new_offset,
            TransactionManager.send) == first
    assert all(getattr(f, "safeguard_patched", False) for f in first)


def test_input_partitions_are_resumed_only_after_the_seek() -> None:
    recovery = type("R", (), {"app": App()})()
    consumer = recovery.app.consumer
    asyncio.run(faust_fixes._deferring_stream_resume(faust_order)(recovery))
    assert consumer.events == [
        ("seek, active at the time", frozenset()),  # held
        ("resume", frozenset({LABELS})),
    ]
    assert "resume_partitions" not in vars(consumer) and "perform_seek" not in vars(consumer)


def test_a_seek_by_another_task_meanwhile_releases_nothing() -> None:
    """faust's fetcher seeks back to the committed offsets when a fetch returns while the flow is
    stopped; that seek may fall between the recovery's resume and its own seek."""

    async def fetcher_seeks_first(recovery: Any) -> None:
        consumer = recovery.app.consumer
        consumer.resume_partitions({LABELS})
        await asyncio.ensure_future(consumer.perform_seek())  # another task: the fetcher's
        assert LABELS not in consumer.active  # still held
        await consumer.perform_seek()  # the recovery's own

    recovery = type("R", (), {"app": App()})()
    asyncio.run(faust_fixes._deferring_stream_resume(fetcher_seeks_first)(recovery))
    assert recovery.app.consumer.events[-1] == ("resume", frozenset({LABELS}))


def test_changelog_partitions_resume_at_once_and_inputs_resume_even_without_a_seek() -> None:
    async def no_seek(recovery: Any) -> None:  # an empty assignment: faust resumes without seeking
        recovery.app.consumer.resume_partitions({LABELS, CHANGELOG})
        assert recovery.app.consumer.active == {CHANGELOG}

    recovery = type("R", (), {"app": App()})()
    asyncio.run(faust_fixes._deferring_stream_resume(no_seek)(recovery))
    assert recovery.app.consumer.active == {LABELS, CHANGELOG}


def test_the_set_of_active_partitions_never_empties_and_stays_the_same_object() -> None:
    """aiokafka reads the set faust hands it live, from the consumer thread, and an empty set means
    "every partition" to it (the stall: a recovery whose changelog records were drained and dropped)."""
    faust_fixes.apply()
    consumer = SimpleNamespace(_active_partitions=None, _paused_partitions={CHANGELOG})
    live = Consumer._set_active_tps(consumer, {LABELS, CHANGELOG})
    assert live == {LABELS, faust_fixes._HOLD}  # paused partitions stay out
    assert Consumer._set_active_tps(consumer, set()) is live and live == {faust_fixes._HOLD}
    consumer._active_partitions = set()  # as faust's _reset_state leaves it
    assert Consumer._get_active_partitions(consumer) == {faust_fixes._HOLD}


class StandInClient:
    """aiokafka's consumer as the fetch fix reads it: the assignment's positions, and a fetch that
    moves them as aiokafka's does when it hands records over."""

    def __init__(self, positions: dict[TP, int]) -> None:
        states = {tp: SimpleNamespace(_position=p) for tp, p in positions.items()}
        assignment = SimpleNamespace(tps=set(states), state_value=states.__getitem__)
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
        self.states = states


def test_records_left_of_a_batch_after_a_seek_are_not_delivered() -> None:
    """The loss: records fetched before the recovery's seek to the committed offsets were delivered
    after it, so the next record looked like a jump past a hole and faust counted the offsets in
    between as processed (labels committed, never counted)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_fixes.apply()
    client = StandInClient({LABELS: 431})

    async def fetch() -> Any:  # as aiokafka: hand over offsets 431..450, position moves to 451
        client.states[LABELS]._position = 451
        return {LABELS: list(range(431, 451))}

    original = faust_fixes._fetch_records_of  # the unpatched fetch the fix wraps
    try:
        faust_fixes._fetch_records_of = lambda *a, **k: fetch()
        records = asyncio.run(AIOKafkaConsumerThread._fetch_records(None, client, {LABELS}, timeout=1.0))
    finally:
        faust_fixes._fetch_records_of = original
    assert records.positions == {LABELS: 451}
    faust_consumer = SimpleNamespace(_safeguard_fetched=records.positions, _thread=SimpleNamespace(_consumer=client))
    assert not faust_fixes._moved(faust_consumer, LABELS)  # nothing moved it: deliver
    client.states[LABELS]._position = 431  # the recovery seeks back to the committed offset
    assert faust_fixes._moved(faust_consumer, LABELS)  # the rest of the batch is read again from there
    client.states.clear()
    client._subscription.subscription.assignment.tps = set()  # revoked
    assert faust_fixes._moved(faust_consumer, LABELS)
    assert not faust_fixes._moved(faust_consumer, CHANGELOG)  # not in the batch: nothing to say


def test_commit_offset_ignores_duplicate_and_already_committed_acks() -> None:
    faust_fixes.apply()
    tp = TP("labels", 0)
    consumer = SimpleNamespace(  # only the bookkeeping _new_offset reads
        _acked={tp: [5, 5, 3, 6, 6, 7]}, _acked_index={tp: {3, 5, 6, 7}}, _committed_offset={tp: 5}, _gap={tp: None})
    # 5, 6, 7 acknowledged: commit 8 (faust's own answer is 4, the first run of [3, 5, 5, ...], a step back)
    assert Consumer._new_offset(consumer, tp) == 8


class StandInTransactions:
    """What faust's TransactionManager.send reads: the app id, the assignor's topic groups, the
    consumer's partitioner, and a producer that records the transaction each record joins."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None, str | None]] = []
        self.app = SimpleNamespace(conf=SimpleNamespace(id="app"),
                                   assignor=SimpleNamespace(group_for_topic=lambda topic: {"labels": 1}.get(topic, 1)))
        self.consumer = SimpleNamespace(key_partition=lambda topic, key, partition: 2)  # the record goes to partition 2
        self.producer = SimpleNamespace(send=self._send)

    async def _send(self, topic: str, key: Any, value: Any, partition: int | None, timestamp: Any, headers: Any, *,
                    transactional_id: str | None = None) -> None:
        self.sent.append((topic, partition, transactional_id))


def test_a_record_sent_while_an_event_is_processed_joins_the_transaction_of_the_event_partition() -> None:
    import weakref

    from faust.streams import _current_event

    faust_fixes.apply()
    transactions = StandInTransactions()
    event = type("Event", (), {"message": SimpleNamespace(tp=TP("labels", 0))})()  # weakly referenceable

    async def send_while_processing() -> None:
        _current_event.set(weakref.ref(event))
        await TransactionManager.send(transactions, "by-actor", b"k", b"v", None, None, None)

    async def send_outside_any_event() -> None:  # a changelog write from faust's buffer task
        _current_event.set(None)
        await TransactionManager.send(transactions, "app-tallies-changelog", b"k", b"v", 2, None, None)

    asyncio.run(send_while_processing())
    asyncio.run(send_outside_any_event())
    # sent to partition 2, in the transaction that commits labels partition 0's offsets (faust: app-1-2)
    assert transactions.sent == [("by-actor", 2, "app-1-0"), ("app-tallies-changelog", 2, "app-1-2")]


class StandInTransactionState:
    def __init__(self, name: str) -> None:
        self.name = name


class StandInTransactionProducer:
    """aiokafka's transactional producer as far as a commit goes: offsets only inside a transaction."""

    def __init__(self, state: str) -> None:
        self._txn_manager = self
        self.state = StandInTransactionState(state)
        self.calls: list[str] = []

    def is_in_transaction(self) -> bool:
        return self.state.name == "IN_TRANSACTION"

    def wait_for_transaction_end(self) -> None:
        return None

    async def begin_transaction(self) -> None:
        assert not self.is_in_transaction()
        self.state = StandInTransactionState("IN_TRANSACTION")
        self.calls.append("begin")

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        from aiokafka.errors import IllegalOperation

        if not self.is_in_transaction():
            raise IllegalOperation("Not in the middle of a transaction")
        self.calls.append(f"offsets {dict(offsets)}")

    async def commit_transaction(self) -> None:
        self.state = StandInTransactionState("READY")
        self.calls.append("commit")


def test_a_commit_after_one_cut_short_begins_a_transaction_before_sending_offsets() -> None:
    """A commit cut short between committing and beginning the next transaction left the producer
    outside any; faust's next commit (at shutdown: the one that ends the transactions) raised there,
    and its consumer thread outlived the app."""
    from collections import defaultdict

    from faust.transport.drivers.aiokafka import Producer

    faust_fixes.apply()
    cut_short, open_ = StandInTransactionProducer("READY"), StandInTransactionProducer("IN_TRANSACTION")
    producer = SimpleNamespace(_transaction_producers={"app-0-0": cut_short, "app-0-1": open_},
                               _trn_locks=defaultdict(asyncio.Lock))
    offsets = {"app-0-0": {TP("labels", 0): 7}, "app-0-1": {TP("labels", 1): 9}}
    asyncio.run(Producer.commit_transactions(producer, offsets, "app", start_new_transaction=False))
    assert cut_short.calls == ["begin", f"offsets {{{TP('labels', 0)!r}: 7}}", "commit"]
    assert open_.calls == [f"offsets {{{TP('labels', 1)!r}: 9}}", "commit"]


def test_escalate_exits_when_a_thread_outlives_the_app() -> None:
    """SIGTERM must end ``safeguard escalate`` even when faust's stop fails half-way and leaves its
    consumer thread (non-daemon) running: after a grace period the process exits, status 1, naming it."""
    import subprocess
    import sys

    script = ("import threading, time\n"
              "from streams.cli.main import _exit_without_lingering_threads\n"
              "threading.Thread(target=time.sleep, args=(3600,), name='faust-consumer-thread').start()\n"
              "_exit_without_lingering_threads(RuntimeError('stop failed'), grace_s=0.2)\n"
              "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert "not reached" not in done.stdout
    assert "faust-consumer-thread" in done.stderr and "stop failed" in done.stderr, done.stderr


def test_a_revoked_partition_takes_the_keys_the_agents_wrote_out_of_memory() -> None:
    """A tally written while processing changelog partition 2, in a transaction the next owner of
    partition 2 aborts, must not outlive the revocation: if partition 2 came back, the replay of the
    committed changelog would leave it in place (a tally "escalated" that no reader ever saw)."""
    import faust

    faust_fixes.apply()
    app = faust.App("fix5", store="memory://", web_enabled=False)
    table = app.Table("tallies", default=dict, partitions=3)
    changelog = table.changelog_topic.get_topic_name()

    class Sent:  # what changelog_topic.send_soon returns, partitioned eagerly
        def __init__(self, partition: int) -> None:
            self.message = SimpleNamespace(partition=partition)

    table.changelog_topic.send_soon = lambda **kw: Sent(kw["partition"])  # type: ignore[method-assign]

    def write(partition: int, key: str, value: Any) -> None:  # what the table does for table[key] = value
        table.send_changelog(partition, key, value)
        table.data[key] = value

    write(2, "a164", {"escalated": True})
    write(0, "a7", {"ids": ["l1"]})
    write(2, "a166", {"ids": ["l2"]})
    table.send_changelog(2, "a166", None)  # deleted again: nothing to remember for it
    del table.data["a166"]
    assigned = {TP(changelog, 0), TP(changelog, 1)}
    asyncio.run(table.data.on_rebalance(assigned, {TP(changelog, 2), TP("labels", 0)}, set()))
    assert dict(table.data.data) == {"a7": {"ids": ["l1"]}}  # partition 0 stays: it is still this member's
    asyncio.run(table.data.on_rebalance(assigned, {TP("labels", 0)}, set()))  # no changelog partition revoked
    assert dict(table.data.data) == {"a7": {"ids": ["l1"]}}


def test_recovery_under_exactly_once_asks_the_broker_how_far_each_changelog_goes() -> None:
    """faust asked aiokafka for the last stable offset it had cached from a fetch: None for a
    partition not fetched yet in this assignment, which faust reads as an empty changelog. The
    broker is asked instead, and once a transaction that is ending has its markers written (the last
    stable offset catches up with the high watermark): before that, a transaction that did commit
    would be left out of the restored state."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_fixes.apply()
    changelog = [TP("app-tallies-changelog", 1), TP("app-tallies-changelog", 2)]

    class StandInAIOKafka:
        """read_committed end offsets (the last stable offsets) that reach the high watermarks once
        the markers of a committing transaction (offsets 300-309 of partition 1) are written."""

        def __init__(self) -> None:
            self.asked = 0
            self._client = SimpleNamespace(cluster=SimpleNamespace(leader_for_partition=lambda tp: 1),
                                           send=self._send)

        def last_stable_offset(self, tp: TP) -> None:
            return None  # not fetched since the rebalance

        async def end_offsets(self, partitions: list[TP]) -> dict[TP, int]:
            self.asked += 1
            return {tp: (300 if self.asked < 3 and tp.partition == 1 else 310 + tp.partition) for tp in partitions}

        async def _send(self, node: int, request: Any) -> Any:
            assert request._isolation_level == 0  # read_uncommitted: the high watermark
            return SimpleNamespace(topics=[(topic, [(p, 0, -1, 310 + p) for p, _ in parts])
                                           for topic, parts in request._topics])

    aiokafka = StandInAIOKafka()
    thread = SimpleNamespace(consumer=SimpleNamespace(in_transaction=True), _ensure_consumer=lambda: aiokafka)
    highwaters = asyncio.run(AIOKafkaConsumerThread._highwaters(thread, changelog))  # type: ignore[arg-type]
    assert highwaters == {changelog[0]: 311, changelog[1]: 312}
    assert aiokafka.asked == 3  # asked again until no transaction was still ending


def test_each_restore_under_exactly_once_starts_with_a_placeholder_below_its_offsets() -> None:
    """faust's restore counts 5-second waits for a changelog event across recoveries; a placeholder
    event at the start of each resets the count (an event below every offset read: skipped as seen)."""
    import logging

    faust_fixes.apply()
    changelog = {TP("app-tallies-changelog", 1)}

    class StandInConsumer:
        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 0 for tp in tps}

    def recovery(in_transaction: bool) -> Any:
        return SimpleNamespace(app=SimpleNamespace(in_transaction=in_transaction), log=logging.getLogger("t"),
                               tables=SimpleNamespace(changelog_queue=asyncio.Queue()),
                               _start_offsets_logtable=lambda offsets, title: "")

    eos, alo = recovery(True), recovery(False)
    for r, title in ((eos, "active"), (eos, "standby"), (alo, "active")):
        destination: Any = Counter(dict.fromkeys(changelog))  # None: as faust's Recovery._add leaves it
        asyncio.run(Recovery._build_offsets(r, StandInConsumer(), changelog, destination, title))
        assert destination == {TP("app-tallies-changelog", 1): -1}  # faust's own start offset, unchanged
    assert alo.tables.changelog_queue.empty()
    placeholder = eos.tables.changelog_queue.get_nowait()
    assert eos.tables.changelog_queue.empty()  # one per restore, for the actives only
    assert placeholder.message.tp in changelog and placeholder.message.offset < -1
