"""librdkafka configuration rendered from the typed settings plus the ``kafka.librdkafka`` escape hatch."""

from __future__ import annotations

import logging
import socket
from typing import Any

from streams.config import Settings

_rdkafka_log = logging.getLogger("streams.librdkafka")


def common(settings: Settings) -> dict[str, Any]:
    """Bootstrap, typed security settings, and librdkafka's log lines routed to Python logging."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, "logger": _rdkafka_log,
            **settings.kafka.security.librdkafka()}


def consumer_config(settings: Settings) -> dict[str, Any]:
    """Consumer: manual commits of tracked watermarks, cooperative rebalancing by default."""
    conf = common(settings) | {
        "group.id": settings.kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.kafka.auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
        "max.poll.interval.ms": 300_000,
        "statistics.interval.ms": 5_000,  # consumer lag for safeguard_consumer_lag
    }
    return conf | _overrides(settings, producer=False)


def transactional_id(settings: Settings) -> str:
    """Stable per consumer instance: a restart of the same instance aborts its open transaction."""
    return settings.kafka.transactional_id or f"{settings.kafka.group_id}-{socket.gethostname()}"


def producer_config(settings: Settings) -> dict[str, Any]:
    """Producer: idempotent (no duplicates from librdkafka's own retries), lz4 for reasoning text."""
    conf = common(settings) | {
        "enable.idempotence": True,
        "linger.ms": 50,
        "compression.type": "lz4",
    }
    return conf | _overrides(settings, producer=True)


_CONSUMER_ONLY = ("group.", "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms",
                  "auto.offset.reset", "enable.auto.", "partition.assignment.strategy", "isolation.level",
                  "fetch.", "queued.", "group.instance.id", "enable.partition.eof")
_PRODUCER_ONLY = ("linger.ms", "batch.", "compression.", "acks", "enable.idempotence", "transactional.",
                  "message.timeout.ms", "delivery.timeout.ms", "queue.buffering.")


def admin_config(settings: Settings) -> dict[str, Any]:
    """Admin client (topic checks): the common settings plus producer-compatible overrides."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.security.librdkafka()} | \
        _overrides(settings, producer=True)


def _overrides(settings: Settings, *, producer: bool) -> dict[str, Any]:
    # One escape hatch for both clients; keys that only apply to the other client are dropped so
    # librdkafka does not log a warning per key at start-up.
    skip = _CONSUMER_ONLY if producer else _PRODUCER_ONLY
    return {k: v for k, v in settings.kafka.librdkafka.items() if not k.startswith(skip)}
