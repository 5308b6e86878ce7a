"""Learning from the label history: the model's own past verdicts, joined to the content they were for.

Label events on ``kafka.labels_topic`` that the model decided (``decided_by: model``) for the
policy's current version are read from the beginning (at most ``limit``, duplicates by ``label_id``
once); each one's content is read back from its ``source`` topic, partition and offset and rendered
as the model read it (chats as transcripts). Content that is gone (retention, compaction) is
skipped and counted. Examples come back in label order (``labeled_at``, then the order read), oldest
first, so the newest share of them is the freshest sample of the model's verdicts (the retraining
gate judges on it). Both topics are read with partitions assigned directly: no consumer group,
nothing committed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, TopicPartition

from streams.cascade.train import Example
from streams.config import Settings
from streams.errors import FatalError, PoisonError, RetryableError
from streams.inference.prompt import render_content
from streams.kafka.config import reader_config
from streams.policy.model import Policy
from streams.wire.codec import Decoder, label_reader

log = logging.getLogger(__name__)


def examples_from_labels(settings: Settings, policy: Policy, *, limit: int = 100_000,
                         timeout_s: float = 120.0) -> list[Example]:
    """Examples (content, the model's verdict) for ``policy`` from the label history."""
    labels = _model_labels(settings, policy, limit, timeout_s)
    wanted: dict[tuple[str, int], dict[int, bool]] = {}
    rank: dict[tuple[str, int, int], int] = {}
    when: dict[tuple[str, int, int], tuple[str, float]] = {}
    rate = settings.prefilter.audit_rate
    for i, (labeled_at, source, violation, audited) in enumerate(labels):
        wanted.setdefault(source[:2], {})[source[2]] = violation
        rank.setdefault(source, i)
        # an audited pair stands for the 1 / audit_rate skipped pairs it was drawn from
        when.setdefault(source, (labeled_at, 1.0 / rate if audited and rate > 0 else 1.0))
    decoder = Decoder(settings.input, settings.schema_registry)
    ranked: list[tuple[int, Example]] = []
    missing = 0
    for (topic, partition), offsets in wanted.items():
        found = read_offsets(settings, topic, partition, sorted(offsets), timeout_s)
        for offset, value in found.items():
            try:
                content = render_content(decoder.decode(value, topic))
            except (PoisonError, RetryableError):
                missing += 1
                continue
            source = (topic, partition, offset)
            labeled_at, weight = when[source]
            ranked.append((rank[source], Example(content, int(offsets[offset]), labeled_at, weight)))
        missing += len(offsets) - len(found)
    examples = [example for _, example in sorted(ranked, key=lambda r: r[0])]
    log.info("label history read policy=%s version=%s labels=%d examples=%d content_missing=%d", policy.id,
             policy.version, len(labels), len(examples), missing)
    return examples


def _consumer(settings: Settings) -> Consumer:
    return Consumer(reader_config(settings.kafka, f"{settings.kafka.group_id}-history-{uuid.uuid4().hex[:8]}"))


def _model_labels(settings: Settings, policy: Policy, limit: int, timeout_s: float
                  ) -> list[tuple[str, tuple[str, int, int], bool, bool]]:
    """(labeled_at, source, violation, audited) of the newest ``limit`` model labels for ``policy``,
    oldest first. The whole topic is read (a nightly retraining must see the newest labels, not the
    first ``limit``), keeping at most twice ``limit`` in memory."""
    topic = settings.kafka.labels_topic
    decode = label_reader(settings, topic)
    seen: dict[str, tuple[str, tuple[str, int, int], bool, bool]] = {}
    for value in values(settings, topic, timeout_s):
        try:
            doc = decode(value)
        except Exception:  # noqa: BLE001, S112 - a record that is not a label is not ours to learn from
            continue
        if (doc.get("policy_id") == policy.id and doc.get("policy_version") == policy.version
                and doc.get("decided_by") == "model"):
            src = doc["source"]
            seen[doc["label_id"]] = (str(doc.get("labeled_at") or ""),
                                     (src["topic"], int(src["partition"]), int(src["offset"])),
                                     bool(doc["violation"]), bool(doc.get("audit")))
            if len(seen) >= 2 * limit:
                seen = _newest(seen, limit)
    # RFC 3339 UTC with fixed precision sorts as text; the sort is stable, so ties keep read order
    return sorted(_newest(seen, limit).values(), key=lambda s: s[0])


def _newest(seen: dict[str, tuple[str, tuple[str, int, int], bool, bool]], limit: int
            ) -> dict[str, tuple[str, tuple[str, int, int], bool, bool]]:
    """The ``limit`` newest labels (RFC 3339 UTC with fixed precision sorts as text)."""
    if len(seen) <= limit:
        return seen
    return dict(sorted(seen.items(), key=lambda item: item[1][0])[-limit:])


def values(settings: Settings, topic: str, timeout_s: float = 120.0) -> Iterator[bytes]:
    """Every value of ``topic`` from the beginning to the end it had when the read began (read
    committed: aborted transactions are not there)."""
    consumer = _consumer(settings)
    try:
        parts = assign_all(consumer, topic)
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        deadline = time.monotonic() + timeout_s
        while not at_end(consumer, parts, ends):
            if time.monotonic() > deadline:
                raise FatalError(f"could not read {topic} to its end within {timeout_s:.0f} s")
            for msg in consumer.consume(1000, 0.5):
                value = msg.value()
                if msg.error() is None and value is not None:
                    yield value
    finally:
        consumer.close()


def read_offsets(settings: Settings, topic: str, partition: int, offsets: list[int], timeout_s: float
                  ) -> dict[int, bytes | None]:
    """The values at ``offsets`` (sorted) of one partition; offsets that no longer exist are left out."""
    consumer = _consumer(settings)
    wanted = set(offsets)
    found: dict[int, bytes | None] = {}
    try:
        tp = TopicPartition(topic, partition, offsets[0])
        consumer.assign([tp])
        end = consumer.get_watermark_offsets(tp, timeout=10)[1]
        deadline = time.monotonic() + timeout_s
        last = min(offsets[-1], end - 1)
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                offset = msg.offset()
                if msg.error() is None and offset is not None and offset in wanted:
                    found[offset] = msg.value()
            position = consumer.position([TopicPartition(topic, partition)])[0].offset
            if position > last or len(found) == len(wanted):
                break
        return found
    finally:
        consumer.close()


def assign_all(consumer: Consumer, topic: str) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        raise FatalError(f"topic {topic!r} cannot be read: {meta.error if meta else 'it does not exist'}")
    parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
    consumer.assign([TopicPartition(topic, p.partition, -2) for p in parts])  # from the beginning
    return [TopicPartition(topic, p.partition) for p in parts]


def at_end(consumer: Consumer, parts: list[TopicPartition], ends: dict[int, int]) -> bool:
    positions = {tp.partition: tp.offset for tp in consumer.position(parts)}
    return all(ends[p] == 0 or positions.get(p, -1) >= ends[p] for p in ends)
