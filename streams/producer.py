"""Output producer: labels, reasoning records and dead letters, each acknowledged by callback.

The caller learns about each record's fate through ``on_acked`` (delivered) or the producer's
``on_failed`` hook (librdkafka gave up after its own retries, which with idempotence means
``delivery.timeout.ms`` passed). A failed output must never let its offset be committed, so the
pipeline treats ``on_failed`` as fatal: it stops without committing past the event, and the restart
re-delivers it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.config import Settings
from streams.events import DeadLetter, LabelEvent, ReasoningRecord
from streams.kafka_config import producer_config

log = logging.getLogger(__name__)

Acked = Callable[[], None]


class OutputProducer:
    """Thin typed wrapper over one idempotent confluent-kafka producer."""

    def __init__(self, settings: Settings, on_failed: Callable[[str, KafkaError], None]) -> None:
        self._labels = settings.kafka.labels_topic
        self._shadow = settings.kafka.labels_topic + ".shadow"
        self._dlq = settings.kafka.dead_letter_topic
        self._reasoning = settings.kafka.reasoning_topic
        self._on_failed = on_failed
        self._producer = Producer(producer_config(settings))

    def label(self, label: LabelEvent, key: bytes | None, on_acked: Acked, *, shadow: bool = False) -> None:
        """Labels of shadow policies go to ``<labels_topic>.shadow`` so they never act on content."""
        self._send(self._shadow if shadow else self._labels, key, label.model_dump_json().encode(), on_acked)

    def reasoning(self, record: ReasoningRecord, key: bytes | None, on_acked: Acked) -> None:
        self._send(self._reasoning, key, record.model_dump_json().encode(), on_acked)

    def dead_letter(self, letter: DeadLetter, key: bytes | None, on_acked: Acked) -> None:
        self._send(self._dlq, key, letter.model_dump_json().encode(), on_acked)

    def _send(self, topic: str, key: bytes | None, value: bytes, on_acked: Acked) -> None:
        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                on_acked()
            else:
                self._on_failed(topic, err)

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=delivered)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room (bounded memory).
                self._producer.poll(0.05)
            except KafkaException as exc:
                self._on_failed(topic, exc.args[0])
                return

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery callbacks (they run in the calling thread)."""
        return self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still not acknowledged."""
        return self._producer.flush(timeout)

    def __len__(self) -> int:
        return len(self._producer)
