"""Policies distributed through a compacted Kafka topic (``kafka.policies_topic``).

Record key = policy id, value = the policy file text (front matter + body); a tombstone (null
value) deletes. Every consumer instance reads the whole topic itself (partitions assigned directly,
no consumer group, nothing committed): each one needs every policy, not a share of them. At start
the reader catches up to the high watermarks before content is consumed (:class:`CatchUp`), so no
event is labelled with a policy the topic has already replaced. A record without a key, or whose
value is not UTF-8, is logged and ignored; a policy that does not validate is rejected with a
logged reason and the previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.config import KafkaSettings
from streams.errors import FatalError
from streams.kafka.config import producer_config, reader_config
from streams.policy.registry import PolicyRegistry

log = logging.getLogger(__name__)


class CatchUp:
    """Which partitions of the policies topic have been read to their end, from the consumer's
    position (the next offset it will read) against the high watermark taken at assignment.

    The offset of the last record says nothing: a log may end in a transaction marker, or with its
    tail compacted away (a cleaned tombstone), or hold no record at all below a watermark above 0.
    A partition is read when it is empty (high <= low), when the position reaches the watermark,
    or when it has read records and then stayed short of the watermark for ``stall_s`` (nothing is
    left to read there: reported in :attr:`short`). A partition that has read nothing yet (the
    broker is slow or down) is never taken as read.
    """

    def __init__(self, ends: dict[int, tuple[int, int]], now: float, stall_s: float = 3.0) -> None:
        self._high = {p: high for p, (low, high) in ends.items()}
        self._behind = {p for p, (low, high) in ends.items() if high > low}
        self._seen: dict[int, tuple[int, float]] = {p: (OFFSET_INVALID, now) for p in self._behind}
        self._stall_s = stall_s
        self.short: list[tuple[int, int, int]] = []  # (partition, position, high watermark)

    @property
    def done(self) -> bool:
        return not self._behind

    @property
    def behind(self) -> list[int]:
        return sorted(self._behind)

    def update(self, positions: dict[int, int], now: float) -> None:
        """``positions``: the consumer's current position per partition (OFFSET_INVALID if none)."""
        for p in list(self._behind):
            position = positions.get(p, OFFSET_INVALID)
            if position >= self._high[p]:
                self._behind.discard(p)
                continue
            last, since = self._seen[p]
            if position != last:
                self._seen[p] = (position, now)
            elif position >= 0 and now - since >= self._stall_s:
                self._behind.discard(p)
                self.short.append((p, position, self._high[p]))


class PolicyTopicReader:
    """Applies policy records from the topic to a :class:`PolicyRegistry`."""

    def __init__(self, kafka: KafkaSettings, registry: PolicyRegistry) -> None:
        if not kafka.policies_topic:
            raise ValueError("kafka.policies_topic is not set")
        self._topic = kafka.policies_topic
        self._registry = registry
        self._consumer = Consumer(reader_config(kafka, f"{kafka.group_id}-policies-{uuid.uuid4().hex[:8]}"))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="policy-topic")

    def catch_up(self, timeout_s: float = 30.0, stall_s: float = 3.0) -> int:
        """Assign all partitions from the beginning and apply records until each partition's
        position reaches its high watermark (:class:`CatchUp`). Returns the records applied.

        Raises:
            FatalError: the topic does not exist, or was not read to its end within ``timeout_s``.
        """
        try:
            meta = self._consumer.list_topics(self._topic, timeout=10)
        except KafkaException as exc:
            raise FatalError(f"cannot read policies topic {self._topic}: {exc}") from exc
        info = meta.topics.get(self._topic)
        if info is None or info.error is not None or not info.partitions:
            raise FatalError(f"policies topic {self._topic!r} does not exist; create it (compacted) first")
        parts = [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in info.partitions]
        self._consumer.assign(parts)
        ends = {p.partition: self._consumer.get_watermark_offsets(p, timeout=10) for p in parts}
        progress = CatchUp(ends, time.monotonic(), stall_s)
        applied = 0
        deadline = time.monotonic() + timeout_s
        while not progress.done:
            if time.monotonic() > deadline:
                raise FatalError(f"could not read policies topic {self._topic} to its end within {timeout_s}s "
                                 f"(partitions behind: {progress.behind})")
            for msg in self._consumer.consume(500, 0.2):
                if msg.error() is None:
                    self._apply(msg)
                    applied += 1
            positions = self._consumer.position([TopicPartition(self._topic, p) for p in progress.behind])
            progress.update({tp.partition: tp.offset for tp in positions}, time.monotonic())
        for partition, position, high in progress.short:
            log.warning("policies topic partition ends below its high watermark topic=%s partition=%d "
                        "position=%d high_watermark=%d (offsets compacted away at its tail): treated as read",
                        self._topic, partition, position, high)
        log.info("policies topic caught up topic=%s records=%d", self._topic, applied)
        return applied

    def _apply(self, msg: Message) -> None:
        key = msg.key()
        if not key:
            log.error("policy record without key ignored topic=%s offset=%s", self._topic, msg.offset())
            return
        value = msg.value()
        try:
            text = value.decode("utf-8") if value is not None else None
        except UnicodeDecodeError:
            log.error("policy update rejected, not UTF-8 key=%r offset=%s", key, msg.offset())
            return
        source = f"{self._topic}[{msg.partition()}]@{msg.offset()}"
        self._registry.apply(key.decode("utf-8", "replace"), text, source=source)

    async def run(self) -> None:
        """Apply new records until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                msgs = await loop.run_in_executor(self._executor, self._consumer.consume, 100, 0.5)
                for msg in msgs:
                    if msg.error() is None:
                        self._apply(msg)
        finally:
            await loop.run_in_executor(self._executor, self._consumer.close)
            self._executor.shutdown(wait=False)


def publish_policies(kafka: KafkaSettings, records: list[tuple[str, bytes | None]]) -> None:
    """Write (policy id, file text or None for a tombstone) records to the policies topic."""
    topic = kafka.policies_topic
    if not topic:
        raise FatalError("kafka.policies_topic is not set (config file or SAFEGUARD_KAFKA__POLICIES_TOPIC)")
    failures: list[str] = []

    def delivered(err: object, msg: Message) -> None:
        if err is not None:
            failures.append(f"{msg.key()!r}: {err}")

    producer = Producer(producer_config(kafka))
    for policy_id, value in records:
        producer.produce(topic, key=policy_id.encode(), value=value, on_delivery=delivered)
    remaining = producer.flush(30)
    if remaining or failures:
        raise FatalError(f"could not publish to {topic}: {failures or f'{remaining} not acknowledged'}")
