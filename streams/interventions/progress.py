"""Whether the escalation app's group has read and committed everything there is on its inputs.

``safeguard escalate --until-idle`` exits only once this says so, so that a restart that has not
fetched anything yet (a group join takes seconds) does not count as idle.
"""

from __future__ import annotations

from typing import Any

from streams.config import Settings


class Progress:
    """The app group's committed offsets on its input topics (the labels and the repartition
    topic), seen from the broker.

    A partition is caught up when its committed offset reaches the high watermark, or when a reader
    at the committed offset, with the app's isolation level, finds nothing more before the end: the
    last records of a transactionally written partition are followed by a commit marker that no
    consumer is ever given, so a committed offset stays one short of the high watermark for good
    (labels written by an exactly-once consumer; the app's own topics under exactly-once)."""

    def __init__(self, settings: Settings, group: str, topics: list[str], *, isolation: str) -> None:
        from confluent_kafka import Consumer

        from streams.kafka.config import reader_config

        self._consumer = Consumer(reader_config(settings.kafka, group)
                                  | {"enable.partition.eof": True, "isolation.level": isolation})
        self._topics = topics

    def behind(self) -> list[str]:
        """The partitions with records the group has not committed, as ``topic[partition]
        committed/high`` (empty: caught up)."""
        from confluent_kafka import TopicPartition

        out: list[str] = []
        short: dict[tuple[str, int], tuple[int, int]] = {}
        for topic in self._topics:
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                out.append(f"{topic}: {meta.error if meta is not None else 'not found'}")
                continue
            parts = [TopicPartition(topic, p) for p in meta.partitions]
            for tp in self._consumer.committed(parts, timeout=10):
                high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                if high > 0 and tp.offset < high:
                    short[(topic, tp.partition)] = (tp.offset, high)
        readable = self._readable(short) if short else set()
        out += [f"{t}[{p}] {max(short[(t, p)][0], -1)}/{short[(t, p)][1]}" for t, p in sorted(readable)]
        return out

    def _readable(self, short: dict[tuple[str, int], tuple[int, int]], timeout_s: float = 10.0) -> set[tuple[str, int]]:
        """Of the partitions short of their high watermark, those where a reader at the committed
        offset is given a record (rather than reaching the end first). Not answered in time: still
        counted as readable, so an idle check never passes by default."""
        import time

        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

        pending = set(short)
        readable: set[tuple[str, int]] = set()
        # nothing committed yet: the group starts where the log starts (auto.offset.reset earliest)
        self._consumer.assign([TopicPartition(t, p, short[(t, p)][0] if short[(t, p)][0] >= 0 else OFFSET_BEGINNING)
                               for t, p in pending])
        deadline = time.monotonic() + timeout_s
        try:
            while pending and time.monotonic() < deadline:
                for msg in self._consumer.consume(100, 0.2):
                    key = (msg.topic(), msg.partition())
                    if key not in pending:
                        continue
                    err: Any = msg.error()
                    if err is None:
                        readable.add(key)
                        pending.discard(key)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
        finally:
            self._consumer.unassign()
        return readable | pending

    def close(self) -> None:
        self._consumer.close()
