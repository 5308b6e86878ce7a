"""Stand-ins for confluent-kafka's Producer and Consumer: they record calls and let a test decide
when (and whether) the broker acknowledges a record, so delivery code runs without a broker."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.config import KafkaSettings
from streams.engine.work import OutRecord, Work
from streams.kafka.producer import OutputProducer


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes
    on_delivery: Any = None
    reported: bool = False


@dataclass
class FakeClient:
    """confluent_kafka.Producer: ``produce`` queues, ``poll`` reports what ``auto_ack`` allows."""

    auto_ack: bool = True
    produced: list[Produced] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # transaction calls, in order
    fail_next: dict[str, KafkaError] = field(default_factory=dict)  # method name -> error, raised once
    offsets_sent: list[list[tuple[str, int, int]]] = field(default_factory=list)

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                on_delivery: Any = None) -> None:
        self.produced.append(Produced(topic, key, value or b"", on_delivery))

    def report(self, index: int, err: KafkaError | None = None) -> None:
        """The broker's answer for one record (its delivery callback runs now)."""
        rec = self.produced[index]
        assert not rec.reported
        rec.reported = True
        if rec.on_delivery is not None:
            rec.on_delivery(err, None)

    def poll(self, timeout: float = 0) -> int:
        if not self.auto_ack:
            return 0
        due = [i for i, r in enumerate(self.produced) if not r.reported and r.on_delivery is not None]
        for i in due:
            self.report(i)
        return len(due)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return len(self)

    def __len__(self) -> int:
        return sum(1 for r in self.produced if not r.reported and r.on_delivery is not None)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        err = self.fail_next.pop(name, None)
        if err is not None:
            raise KafkaException(err)

    def init_transactions(self, timeout: float) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: Any, timeout: float) -> None:
        self._call("send_offsets")
        self.offsets_sent.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")


@dataclass
class FakeConsumer:
    """confluent_kafka.Consumer as delivery uses it: commits, assignment, committed offsets, seeks."""

    assigned: list[tuple[str, int]] = field(default_factory=list)
    committed_at: dict[tuple[str, int], int] = field(default_factory=dict)  # the group's committed offsets
    commits: list[tuple[dict[tuple[str, int], int], bool]] = field(default_factory=list)
    seeks: list[tuple[str, int, int]] = field(default_factory=list)
    fail_commit: KafkaError | None = None

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        if self.fail_commit is not None:
            err, self.fail_commit = self.fail_commit, None
            raise KafkaException(err)
        positions = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        self.commits.append((positions, asynchronous))
        self.committed_at.update(positions)

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_at.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def output_producer(client: FakeClient) -> OutputProducer:
    return OutputProducer(KafkaSettings(), producer=client)


def decided(offset: int, *records: str, partition: int = 0, topic: str = "in") -> Work:
    """A consumed event whose outputs are built: one record per name in ``records`` (their topics)."""
    work = Work((topic, partition), offset, f"k{offset}".encode(), b"v", 0.0)
    work.records = [OutRecord(t, f"{t}:{offset}".encode()) for t in records]
    return work


@dataclass
class FakeMessage:
    """confluent_kafka.Message."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None
    _timestamp_ms: int | None = None  # None: the broker gave none (TIMESTAMP_NOT_AVAILABLE)

    def timestamp(self) -> tuple[int, int]:
        return (0, -1) if self._timestamp_ms is None else (1, self._timestamp_ms)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


class FakeKafkaConsumer(FakeConsumer):
    """confluent_kafka.Consumer for the poll loop: assigns its partitions on the first consume and
    hands out ``messages`` in order; ``close`` revokes like a real leave of the group.

    One thread at a time, as confluent-kafka (2.16 on) enforces: a call from another thread while one
    is inside ``consume()`` or ``close()`` (their rebalance callbacks included) waits until it returns;
    a call from the callback's own thread goes through. ``before_consume(self)`` runs at the start of
    each ``consume()`` (e.g. to :meth:`revoke` partitions there, as a rebalance would)."""

    def __init__(self, messages: list[FakeMessage], partitions: list[tuple[str, int]],
                 before_consume: Any = None) -> None:
        super().__init__(assigned=[])
        self._queue = list(messages)
        self._partitions = partitions
        self._callbacks: dict[str, Any] = {}
        self._before_consume = before_consume
        self._gate = threading.Condition()
        self._holder: int | None = None
        self._in_callback = False
        self.in_callback_calls: list[str] = []  # consumer methods called while a rebalance callback ran
        self.paused: set[tuple[str, int]] = set()
        self.pauses = 0
        self.closed = False

    @contextlib.contextmanager
    def _held(self, name: str, *, hold: bool = False) -> Iterator[None]:
        me = threading.get_ident()
        with self._gate:
            if self._in_callback:
                self.in_callback_calls.append(name)
            if self._holder == me:
                yield
                return
            self._gate.wait_for(lambda: self._holder is None)
            if hold:
                self._holder = me
        try:
            yield
        finally:
            if hold:
                with self._gate:
                    self._holder = None
                    self._gate.notify_all()

    def _callback(self, kind: str, partitions: list[TopicPartition]) -> None:
        self._in_callback = True
        try:
            self._callbacks[kind](self, partitions)
        finally:
            self._in_callback = False

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        import time

        with self._held("consume", hold=True):
            if self._before_consume is not None:
                self._before_consume(self)
            if not self.assigned and not self.closed and self._partitions:  # after lose(): when given back
                self.assigned = list(self._partitions)
                self._callback("assign", self.assignment())
            ready = [m for m in self._queue if (m.topic(), m.partition()) in self.assigned
                     and (m.topic(), m.partition()) not in self.paused][:num_messages]
            if not ready:
                time.sleep(min(timeout, 0.01))
            for m in ready:
                self._queue.remove(m)
            return ready

    def revoke(self, partitions: list[tuple[str, int]]) -> None:
        """A cooperative rebalance takes ``partitions`` away (call it from ``before_consume``)."""
        self._callback("revoke", [TopicPartition(t, p) for t, p in partitions])
        self.assigned = [tp for tp in self.assigned if tp not in partitions]
        self._partitions = list(self.assigned)

    def lose(self) -> None:
        """The group fenced this member (session timeout): every partition lost, none given back until a
        test sets ``_partitions`` again (call it from ``before_consume``)."""
        self._callback("lost", self.assignment())
        self.assigned, self._partitions = [], []

    def close(self) -> None:
        with self._held("close", hold=True):
            if self._callbacks:  # subscribed: leaving the group revokes
                self._callback("revoke", self.assignment())
            self.assigned, self.closed = [], True

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        with self._held("commit"):
            super().commit(offsets, asynchronous)

    def consumer_group_metadata(self) -> str:
        with self._held("consumer_group_metadata"):
            return super().consumer_group_metadata()

    def assignment(self) -> list[TopicPartition]:
        with self._held("assignment"):
            return super().assignment()

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        with self._held("committed"):
            return super().committed(partitions, timeout)

    def seek(self, tp: TopicPartition) -> None:
        with self._held("seek"):
            super().seek(tp)

    def pause(self, partitions: list[TopicPartition]) -> None:
        with self._held("pause"):
            self.pauses += 1
            self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        with self._held("resume"):
            self.paused -= {(tp.topic, tp.partition) for tp in partitions}


class FakePool:
    """The replica pool as the labeler and the loop see it: ``answer(content) -> final answer``."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer
        self.requests: list[dict[str, Any]] = []
        self.answered = 0
        self.waiting = 0
        self.inflight = 0
        self.healthy_count = 1
        self.free_slots = 64

    async def chat(self, body: dict[str, Any], lane: Any = None) -> Any:
        from streams.inference.replicas.client import ChatResult

        self.requests.append(body)
        content = self._answer(body["messages"][-1]["content"])
        self.answered += 1
        return ChatResult(content, "simulated reasoning", "stop", 100, 20, "fake://replica", 0.01)
