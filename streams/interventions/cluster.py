"""What the escalation app takes from the cluster: the labels topic's layout, faust's broker
settings, and the wait until topics it created are in the cluster's metadata."""

from __future__ import annotations

import time
from typing import Any

import faust

from streams.config import Settings
from streams.errors import ConfigError, FatalError


def layout(settings: Settings, topic: str) -> tuple[int, int]:
    """(partitions, replication factor) of the labels topic: the internal topics (repartition,
    changelog) get the same, so they are as parallel and as durable as the labels."""
    from confluent_kafka.admin import AdminClient

    from streams.kafka.config import admin_config

    meta = AdminClient(admin_config(settings.kafka)).list_topics(topic, timeout=10)
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise FatalError(f"labels topic {topic!r} cannot be read: {found.error if found else 'it does not exist'}")
    return len(found.partitions), max(1, len(next(iter(found.partitions.values())).replicas))


def broker_settings(settings: Settings) -> dict[str, Any]:
    """faust's broker settings from ``kafka`` (bootstrap, security, the session timeout)."""
    k = settings.kafka
    conf: dict[str, Any] = {"broker": ",".join(f"kafka://{h.strip()}" for h in k.bootstrap_servers.split(","))}
    session_ms = k.librdkafka.get("session.timeout.ms")
    if session_ms is not None:
        session_s = float(session_ms) / 1000
        conf.update(broker_session_timeout=session_s, broker_heartbeat_interval=max(0.5, session_s / 6),
                    broker_rebalance_timeout=max(session_s, 6.0))
    sec = k.security
    if sec.protocol != "PLAINTEXT":
        import ssl

        context = None
        if sec.protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=sec.ssl_ca_location)
            if sec.ssl_certificate_location:
                key_password = sec.ssl_key_password.get_secret_value() if sec.ssl_key_password else None
                context.load_cert_chain(sec.ssl_certificate_location, sec.ssl_key_location, key_password)
        if sec.protocol.startswith("SASL"):
            if sec.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
                raise ConfigError(f"safeguard escalate: SASL mechanism {sec.sasl_mechanism} is not supported "
                                  "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
            password = sec.sasl_password.get_secret_value() if sec.sasl_password else None
            conf["broker_credentials"] = faust.SASLCredentials(
                username=sec.sasl_username, password=password, mechanism=sec.sasl_mechanism, ssl_context=context)
        else:
            conf["broker_credentials"] = faust.SSLCredentials(context)
    return conf


def wait_listed(settings: Settings, topics: list[str], partitions: int, timeout_s: float = 60.0) -> None:
    """Return once the cluster's metadata lists ``topics`` with ``partitions`` each (raise
    FatalError after ``timeout_s``)."""
    from confluent_kafka.admin import AdminClient

    from streams.kafka.config import admin_config

    admin = AdminClient(admin_config(settings.kafka))
    deadline = time.monotonic() + timeout_s
    while True:
        listed = admin.list_topics(timeout=10).topics
        missing = [t for t in topics if t not in listed or listed[t].error is not None
                   or len(listed[t].partitions) != partitions]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise FatalError(f"internal topics {missing} not in the cluster's metadata {timeout_s:.0f}s after "
                             "they were created")
        time.sleep(0.1)
