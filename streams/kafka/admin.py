"""Start-up checks against the cluster: fail fast, with the topic named, instead of retrying for minutes."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.config import KafkaSettings
from streams.errors import FatalError
from streams.kafka.config import admin_config


def existing_topics(kafka: KafkaSettings, timeout_s: float = 15.0) -> set[str]:
    """Names of the topics on the cluster. Raises FatalError when Kafka cannot be reached."""
    try:
        return set(AdminClient(admin_config(kafka)).list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise FatalError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from exc


def require_topics(kafka: KafkaSettings, names: Iterable[str], timeout_s: float = 15.0) -> None:
    """Raise FatalError naming every topic of ``names`` that does not exist. For output topics,
    librdkafka would otherwise retry each record for ``delivery.timeout.ms`` and then fail it."""
    wanted = list(dict.fromkeys(names))
    present = existing_topics(kafka, timeout_s)
    missing = [t for t in wanted if t not in present]
    if missing:
        raise FatalError(f"output topics do not exist: {missing}; create them before starting the consumer")
