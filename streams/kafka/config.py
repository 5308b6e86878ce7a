"""librdkafka configuration rendered from the ``kafka`` settings plus its ``librdkafka`` escape hatch."""

from __future__ import annotations

import socket
from typing import Any

from streams.config import KafkaSettings
from streams.kafka.logs import LIBRDKAFKA_LOG


def common(kafka: KafkaSettings) -> dict[str, Any]:
    """Bootstrap, typed security settings, and librdkafka's log lines routed to Python logging."""
    return {"bootstrap.servers": kafka.bootstrap_servers, "logger": LIBRDKAFKA_LOG, **kafka.security.librdkafka()}


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Consumer: manual commits of tracked watermarks, cooperative rebalancing by default."""
    conf = common(kafka) | {
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
        "max.poll.interval.ms": 300_000,
        "statistics.interval.ms": 5_000,  # consumer lag for safeguard_consumer_lag
    }
    if kafka.group_instance_id:
        conf["group.instance.id"] = kafka.group_instance_id
    return conf | _overrides(kafka, producer=False)


def transactional_id(kafka: KafkaSettings) -> str:
    """Stable per consumer instance: a restart of the same instance aborts its open transaction."""
    return kafka.transactional_id or f"{kafka.group_id}-{socket.gethostname()}"


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Producer: idempotent (no duplicates from librdkafka's own retries), lz4 for reasoning text."""
    conf = common(kafka) | {
        "enable.idempotence": True,
        "linger.ms": 50,
        "compression.type": "lz4",
    }
    return conf | _overrides(kafka, producer=True)


def admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Admin client (topic checks): the common settings plus producer-compatible overrides."""
    return common(kafka) | _overrides(kafka, producer=True)


def reader_config(kafka: KafkaSettings, group_id: str) -> dict[str, Any]:
    """A consumer that assigns partitions itself and commits nothing (the policies topic): the common
    settings plus the connection-level overrides only (security, client, socket, broker)."""
    overrides = {k: v for k, v in kafka.librdkafka.items()
                 if k.startswith(("security.", "sasl.", "ssl.", "client.", "socket.", "broker."))}
    return common(kafka) | overrides | {"group.id": group_id, "enable.auto.commit": False,
                                        "enable.partition.eof": False}


_CONSUMER_ONLY = ("group.", "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms",
                  "auto.offset.reset", "enable.auto.", "partition.assignment.strategy", "isolation.level",
                  "fetch.", "queued.", "group.instance.id", "enable.partition.eof")
_PRODUCER_ONLY = ("linger.ms", "batch.", "compression.", "acks", "enable.idempotence", "transactional.",
                  "message.timeout.ms", "delivery.timeout.ms", "queue.buffering.")


def _overrides(kafka: KafkaSettings, *, producer: bool) -> dict[str, Any]:
    # One escape hatch for both clients; keys that only apply to the other client are dropped so
    # librdkafka does not log a warning per key at start-up.
    skip = _CONSUMER_ONLY if producer else _PRODUCER_ONLY
    return {k: v for k, v in kafka.librdkafka.items() if not k.startswith(skip)}
