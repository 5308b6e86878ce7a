"""What ``safeguard coop reports`` remembers: the ids of the requests each partition sent last.

A request the consumer wrote twice (at-least-once delivery after a crash) has the same key, so the
same partition, and the same id: the sender skips an id it remembers. The last ``DEDUPE_WINDOW``
ids of each partition are kept; when a partition is assigned (a restart, a rebalance) the requests
just below its committed offset are read back, since they were done before this member had it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict

from confluent_kafka import Consumer, TopicPartition
from pydantic import ValidationError

from streams.config import KafkaSettings
from streams.kafka.config import reader_config
from streams.wire.integrations import CoopRequest

log = logging.getLogger(__name__)

DEDUPE_WINDOW = 10_000  # request ids remembered per partition
READ_BACK_S = 30.0


class Seen:
    """The ids of the last ``limit`` requests of each partition."""

    def __init__(self, limit: int = DEDUPE_WINDOW) -> None:
        self._limit = limit
        self._ids: dict[int, OrderedDict[str, None]] = {}

    def __contains__(self, item: tuple[int, str]) -> bool:
        return item[1] in self._ids.get(item[0], ())

    def add(self, partition: int, ident: str) -> None:
        ids = self._ids.setdefault(partition, OrderedDict())
        ids[ident] = None
        ids.move_to_end(ident)
        while len(ids) > self._limit:
            ids.popitem(last=False)


def seen_id(request: CoopRequest) -> str:
    return f"{request.kind}/{request.id}"


def read_back(kafka: KafkaSettings, topic: str, group_id: str, partition: int, committed: int, seen: Seen) -> None:
    """Remember the ids of the requests of ``partition`` just below ``committed`` (from the oldest
    retained one, within ``READ_BACK_S``)."""
    reader = Consumer(reader_config(kafka, group_id) | {"isolation.level": "read_committed",
                                                        "auto.offset.reset": "earliest"})
    try:
        low, _ = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        start = max(low, committed - DEDUPE_WINDOW)
        reader.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + READ_BACK_S
        position, read = start, 0
        while position < committed:
            if time.monotonic() > deadline:
                log.warning("read back %d of the requests below %s[%d]@%d within %.0f s: the older ones are not "
                            "remembered", read, topic, partition, committed, READ_BACK_S)
                break
            for m in reader.consume(1000, 0.5):
                if m.error() is not None or (m.offset() or 0) >= committed:
                    continue
                with contextlib.suppress(ValidationError):
                    seen.add(partition, seen_id(CoopRequest.model_validate_json(m.value() or b"")))
                    read += 1
            position = reader.position([TopicPartition(topic, partition)])[0].offset
    finally:
        reader.close()
