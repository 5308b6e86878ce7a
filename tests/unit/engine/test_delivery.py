"""The commit protocol without a broker: fake producer client and consumer, both strategies."""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import KafkaError

from streams.engine.delivery import AtLeastOnce, ExactlyOnce, Ledger
from streams.engine.work import OutRecord
from tests.unit.engine.fakes import FakeClient, FakeConsumer, decided, output_producer

P0, P1 = ("in", 0), ("in", 1)


class Task:
    """Stands in for an inference task still running for an event."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def at_least_once(client: FakeClient, consumer: FakeConsumer) -> AtLeastOnce:
    d = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    d.start(consumer)
    return d


def exactly_once(client: FakeClient, consumer: FakeConsumer) -> ExactlyOnce:
    d = ExactlyOnce(Ledger(), output_producer(client), commit_interval_s=0.0, auto_offset_reset="earliest")
    d.start(consumer)
    return d


# ---- at-least-once ---------------------------------------------------------------------------

def test_out_of_order_completion_commits_only_the_contiguous_prefix() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = at_least_once(client, consumer)
    w0, w1, w2 = decided(0, "labels"), decided(1, "labels", "dlq"), decided(2, "labels")
    for w in (w0, w1, w2):
        d.ledger.add(w)
    d.complete(w2)
    d.complete(w0)
    d.tick(time.monotonic())  # serves the acks of 2 and 0, then commits
    assert consumer.commits == [({P0: 1}, True)]  # 2 is acknowledged but 1 is not done: no further
    d.complete(w1)
    d.tick(time.monotonic())
    assert consumer.commits[-1] == ({P0: 3}, True)
    assert [r.value for r in client.produced] == [b"labels:2", b"labels:0", b"labels:1", b"dlq:1"]
    assert d.ledger.count == 0 and d.failure is None


def test_an_event_settles_only_when_every_record_is_acknowledged_and_counts_each() -> None:
    client, consumer = FakeClient(auto_ack=False), FakeConsumer()
    d = at_least_once(client, consumer)
    counted: list[str] = []
    w = decided(0)
    w.records = [OutRecord("labels", b"a", lambda: counted.append("label")),
                 OutRecord("dlq", b"b", lambda: counted.append("dead letter"))]
    d.ledger.add(w)
    d.complete(w)
    assert d.awaiting_acks()
    client.report(1)
    d.tick(time.monotonic())
    assert d.ledger.count == 1 and consumer.commits == [] and counted == ["dead letter"]
    client.report(0)
    d.tick(time.monotonic())
    assert d.ledger.count == 0 and consumer.commits == [({P0: 1}, True)] and counted == ["dead letter", "label"]


def test_a_failed_delivery_report_is_fatal_and_nothing_is_committed_past_it() -> None:
    client, consumer = FakeClient(auto_ack=False), FakeConsumer()
    d = at_least_once(client, consumer)
    w0, w1 = decided(0, "labels"), decided(1, "labels")
    for w in (w0, w1):
        d.ledger.add(w)
        d.complete(w)
    client.report(0, KafkaError(KafkaError._MSG_TIMED_OUT, "Message timed out"))
    client.report(1)
    d.tick(time.monotonic())
    assert d.failure is not None and "timed out" in str(d.failure)
    assert d.ledger.holds(w0) and consumer.commits == []  # 1 settled, but 0 holds the watermark
    d.close(time.monotonic(), commit=False)  # the pipeline stops without a last commit
    assert consumer.commits == []


def test_revoke_commits_the_revoked_partitions_and_waits_then_drops_work_in_flight() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = at_least_once(client, consumer)
    a0, a1, b0 = decided(0, "labels"), decided(1, "labels"), decided(0, "labels", partition=1)
    running = Task()
    a1.tasks.add(running)  # type: ignore[arg-type]
    for w in (a0, a1, b0):
        d.ledger.add(w)
    d.complete(a0)
    d.complete(b0)
    d.revoke([P0])
    # Only the revoked partition, before it goes; synchronous: the member rejoins after the commit.
    assert consumer.commits == [({P0: 1}, False)]
    assert running.cancelled and not d.ledger.holds(a1) and d.ledger.holds(b0) is False  # b0 settled, kept
    assert d.ledger.in_flight(P0) == 0 and d.ledger.positions() == {P1: 1}
    d.complete(a1)  # a late completion of revoked work settles nothing and raises nothing
    d.tick(time.monotonic())
    assert consumer.commits[-1] == ({P1: 1}, True) and d.ledger.count == 0


def test_a_commit_that_fails_is_retried_with_the_next_one() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = at_least_once(client, consumer)
    w = decided(0, "labels")
    d.ledger.add(w)
    d.complete(w)
    consumer.fail_commit = KafkaError(KafkaError.REQUEST_TIMED_OUT, "timed out", retriable=True)
    d.tick(time.monotonic())
    assert consumer.commits == []
    d.tick(time.monotonic())  # nothing new settled, the same position goes again
    assert consumer.commits == [({P0: 1}, True)]


async def test_shutdown_drains_then_commits_synchronously() -> None:
    client, consumer = FakeClient(auto_ack=False), FakeConsumer()
    d = at_least_once(client, consumer)
    w0, w1 = decided(0, "labels"), decided(1, "labels")
    for w in (w0, w1):
        d.ledger.add(w)
        d.complete(w)
    drain = asyncio.create_task(d.drain(time.monotonic() + 30))
    await asyncio.sleep(0.05)
    assert not drain.done()  # still waiting for the broker
    client.auto_ack = True
    await asyncio.wait_for(drain, 5)
    d.close(time.monotonic() + 5, commit=True)
    assert consumer.commits == [({P0: 2}, False)] and d.ledger.count == 0


async def test_the_drain_is_bounded_by_its_deadline() -> None:
    client, consumer = FakeClient(auto_ack=False), FakeConsumer()
    d = at_least_once(client, consumer)
    w = decided(0, "labels")
    d.ledger.add(w)
    d.complete(w)
    await asyncio.wait_for(d.drain(time.monotonic() + 0.1), 5)  # returns although never acknowledged
    d.close(time.monotonic(), commit=True)
    assert consumer.commits == [] and d.ledger.holds(w)


# ---- exactly-once ----------------------------------------------------------------------------

def test_exactly_once_releases_in_offset_order_and_commits_offsets_in_the_transaction() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = exactly_once(client, consumer)
    counted: list[int] = []
    w0, w1, w2 = decided(0, "labels"), decided(1, "labels"), decided(2, "labels")
    w1.records[0] = OutRecord("labels", b"labels:1", lambda: counted.append(1))
    b0 = decided(0, "labels", partition=1)
    for w in (w0, w1, w2, b0):
        d.ledger.add(w)
    d.complete(w1)
    d.complete(b0)
    d.tick(time.monotonic())
    assert [r.value for r in client.produced] == [b"labels:0"]  # b0 only: w1 waits for w0
    assert client.offsets_sent == [[("in", 1, 1)]]
    d.complete(w0)
    d.tick(time.monotonic())
    assert [r.value for r in client.produced] == [b"labels:0", b"labels:0", b"labels:1"]
    assert client.offsets_sent[-1] == [("in", 0, 2)] and counted == [1]  # counted once committed
    assert d.ledger.holds(w2) and d.ledger.count == 1
    assert client.calls == ["init", "begin", "send_offsets", "commit", "begin", "send_offsets", "commit", "begin"]
    assert consumer.commits == []  # the group's offsets move only through the transaction


def test_exactly_once_abort_rewinds_every_partition_to_its_committed_offset() -> None:
    client = FakeClient()
    consumer = FakeConsumer(assigned=[P0, P1], committed_at={P0: 5})
    d = exactly_once(client, consumer)
    counted: list[int] = []
    w5, w6, b0 = decided(5, "labels"), decided(6, "labels"), decided(0, "labels", partition=1)
    w5.records[0] = OutRecord("labels", b"labels:5", lambda: counted.append(5))
    running = Task()
    w6.tasks.add(running)  # type: ignore[arg-type]
    for w in (w5, w6, b0):
        d.ledger.add(w)
    d.complete(w5)
    d.complete(b0)
    client.fail_next["commit"] = KafkaError(KafkaError._FENCED, "fenced", txn_requires_abort=True)
    d.tick(time.monotonic())
    assert d.aborts == 1 and client.calls[-2:] == ["abort", "begin"]
    assert sorted(consumer.seeks) == [("in", 0, 5), ("in", 1, -2)]  # P1 never committed: from the beginning
    assert d.ledger.count == 0 and running.cancelled and counted == []
    d.complete(w6)  # late: the rewind consumes it again, so it must not be released now
    d.tick(time.monotonic())
    assert [r.value for r in client.produced] == [b"labels:5", b"labels:0"]


def test_exactly_once_revoke_commits_the_transaction_then_drops_the_partition() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = exactly_once(client, consumer)
    w0, w1, b0 = decided(0, "labels"), decided(1, "labels"), decided(0, "labels", partition=1)
    for w in (w0, w1, b0):
        d.ledger.add(w)
    d.complete(w0)
    d.complete(b0)
    d.revoke([P0])
    assert client.offsets_sent == [[("in", 0, 1), ("in", 1, 1)]] and client.calls[-2:] == ["commit", "begin"]
    assert not d.ledger.holds(w1) and d.ledger.partitions() == [P1]


def test_exactly_once_close_without_commit_aborts() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = exactly_once(client, consumer)
    w = decided(0, "labels")
    d.ledger.add(w)
    d.complete(w)
    asyncio.run(d.drain(time.monotonic() + 1))  # releases it into the open transaction
    d.close(time.monotonic(), commit=False)
    assert client.calls[-1] == "abort" and client.offsets_sent == []


# ---- failure branches ------------------------------------------------------------------------

def test_a_retriable_transaction_commit_is_tried_again_next_tick_without_producing_meanwhile() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = exactly_once(client, consumer)
    counted: list[int] = []
    w0, w1 = decided(0, "labels"), decided(1, "labels")
    w0.records[0] = OutRecord("labels", b"labels:0", lambda: counted.append(0))
    for w in (w0, w1):
        d.ledger.add(w)
    d.complete(w0)
    client.fail_next["commit"] = KafkaError(KafkaError.REQUEST_TIMED_OUT, "coordinator timed out", retriable=True)
    d.tick(time.monotonic())
    assert client.calls.count("commit") == 1 and counted == []  # one attempt per tick: the loop never sleeps
    d.complete(w1)
    d.tick(time.monotonic())  # the commit again; w1 waits (no produce while committing)
    assert client.calls[-2:] == ["commit", "begin"] and counted == [0]
    assert [r.value for r in client.produced] == [b"labels:0"]
    d.tick(time.monotonic())
    assert [r.value for r in client.produced] == [b"labels:0", b"labels:1"]
    assert client.offsets_sent == [[("in", 0, 1)], [("in", 0, 2)]]


def test_exactly_once_revoke_aborts_a_transaction_it_cannot_commit_and_rewinds_the_rest() -> None:
    client = FakeClient()
    consumer = FakeConsumer(assigned=[P0, P1], committed_at={P0: 0, P1: 4})
    d = exactly_once(client, consumer)
    a0, b4 = decided(0, "labels"), decided(4, "labels", partition=1)
    for w in (a0, b4):
        d.ledger.add(w)
        d.complete(w)
    client.fail_next["commit"] = KafkaError(KafkaError.REQUEST_TIMED_OUT, "timed out", retriable=True)
    d.revoke([P0])
    assert client.calls[-2:] == ["abort", "begin"] and d.aborts == 1
    assert consumer.seeks == [("in", 1, 4)]  # the kept partition again from its committed offset, not P0
    assert d.ledger.count == 0 and d.ledger.partitions() == []
    d.tick(time.monotonic())
    assert client.calls[-1] == "begin"  # no commit left pending for the aborted transaction


def test_exactly_once_lost_partitions_abort_the_open_transaction() -> None:
    client = FakeClient()
    consumer = FakeConsumer(assigned=[P0, P1], committed_at={P1: 2})
    d = exactly_once(client, consumer)
    counted: list[int] = []
    a0, b2 = decided(0, "labels"), decided(2, "labels", partition=1)
    a0.records[0] = OutRecord("labels", b"labels:0", lambda: counted.append(0))
    for w in (a0, b2):
        d.ledger.add(w)
        d.complete(w)
    d.tick(time.monotonic() - 10)  # released into the transaction, not committed yet
    d.lose([P0])
    assert "abort" in client.calls and client.offsets_sent == [] and counted == []
    assert consumer.seeks == [("in", 1, 2)] and d.ledger.count == 0


def test_at_least_once_lost_partitions_are_dropped_uncommitted() -> None:
    client, consumer = FakeClient(auto_ack=False), FakeConsumer()
    d = at_least_once(client, consumer)
    w = decided(0, "labels")
    running = Task()
    w.tasks.add(running)  # type: ignore[arg-type]
    d.ledger.add(w)
    d.lose([P0])
    assert running.cancelled and d.ledger.count == 0 and consumer.commits == []


def test_at_least_once_revoke_survives_a_failed_commit() -> None:
    client, consumer = FakeClient(), FakeConsumer()
    d = at_least_once(client, consumer)
    w = decided(0, "labels")
    d.ledger.add(w)
    d.complete(w)
    consumer.fail_commit = KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalancing")
    d.revoke([P0])  # logged; the next owner starts from the last commit (duplicates, no loss)
    assert consumer.commits == [] and d.ledger.partitions() == []
