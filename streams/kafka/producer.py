"""Output producer: one confluent-kafka producer for labels, reasoning records and dead letters.

At-least-once: idempotent producer, every record acknowledged by callback. Exactly-once: a
transactional producer (stable ``transactional.id``) driven through the transactional verbs
(:meth:`OutputProducer.init_transactions`, ``begin``, ``send_offsets``, ``commit``, ``abort``, as
in confluent-kafka's ``eos_transactions.py``); records carry no callbacks because the transaction
commit is the acknowledgement. A record librdkafka gives up on (after
``delivery.timeout.ms``), or refuses outright, is recorded in :attr:`OutputProducer.failure`:
delivery treats it as fatal, so the offset of its event is never committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streams.config import KafkaSettings
from streams.kafka.config import producer_config

log = logging.getLogger(__name__)

Acked = Callable[[], None]


class OutputProducer:
    """Thin wrapper over one confluent-kafka producer.

    The transactional verbs pass straight through to librdkafka and raise its ``KafkaException``
    unchanged: what a failure means (retriable, abortable, fatal) is the caller's decision.
    """

    def __init__(self, kafka: KafkaSettings, transactional_id: str | None = None, *,
                 producer: Any | None = None) -> None:
        """``producer``: an already built client with confluent-kafka's ``Producer`` methods (tests)."""
        if producer is None:
            conf = producer_config(kafka)
            if transactional_id is not None:
                conf["transactional.id"] = transactional_id
                conf.setdefault("transaction.timeout.ms", 60_000)
            producer = Producer(conf)
        self._client = producer
        self.failure: KafkaException | None = None  # the first record that was not delivered

    def send(self, topic: str, key: bytes | None, value: bytes, on_acked: Acked | None) -> None:
        """Queue one record; ``on_acked`` runs (in :meth:`poll`) once the broker has it."""
        callback = self._callback(topic, on_acked) if on_acked is not None else None
        while True:
            try:
                if callback is None:
                    self._client.produce(topic, value=value, key=key)
                else:
                    self._client.produce(topic, value=value, key=key, on_delivery=callback)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room (bounded memory).
                self._client.poll(0.05)
            except KafkaException as exc:
                self._failed(topic, exc.args[0])
                return

    def _callback(self, topic: str, on_acked: Acked) -> Callable[[KafkaError | None, Any], None]:
        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                on_acked()
            else:
                self._failed(topic, err)
        return delivered

    def _failed(self, topic: str, err: KafkaError) -> None:
        if self.failure is None:
            log.error("output not delivered topic=%s error=%s: stopping without committing past it", topic, err)
            self.failure = KafkaException(err)

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery callbacks (they run in the calling thread)."""
        return self._client.poll(timeout)

    def pending(self) -> int:
        """Records queued or in flight, not yet reported delivered."""
        return len(self._client)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still not acknowledged."""
        return self._client.flush(timeout)

    # ---- transactions (exactly-once; the producer must have a ``transactional.id``) ---------------

    def init_transactions(self, timeout: float) -> None:
        """Register the ``transactional.id`` with the coordinator, fencing an older producer of the
        same id and aborting a transaction it left open (blocking)."""
        self._client.init_transactions(timeout)

    def begin_transaction(self) -> None:
        """Open a transaction: the records produced from now on belong to it."""
        self._client.begin_transaction()

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], group_metadata: Any,
                                    timeout: float) -> None:
        """Add the consumer group's ``offsets`` (next offsets to read) to the open transaction;
        ``group_metadata`` is the consumer's ``consumer_group_metadata()`` (fences stale generations)."""
        self._client.send_offsets_to_transaction(offsets, group_metadata, timeout)

    def commit_transaction(self, timeout: float) -> None:
        """Flush and commit the open transaction: its records and offsets become visible together."""
        self._client.commit_transaction(timeout)

    def abort_transaction(self, timeout: float) -> None:
        """Abort the open transaction: its records are never visible to ``read_committed`` readers."""
        self._client.abort_transaction(timeout)
