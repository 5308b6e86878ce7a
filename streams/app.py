"""Assembly of the production consumer: settings -> policies -> replicas -> pipeline -> endpoints.

Only wiring lives here; behaviour lives in the parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.errors import FatalError
from streams.health import health_app, start_health_server
from streams.kafka_config import admin_config
from streams.metrics import Metrics, build_metrics
from streams.pipeline import Pipeline
from streams.policies import Router, load_policies
from streams.replicas.pool import ReplicaPool

log = logging.getLogger(__name__)


def pool_observer(metrics: Metrics) -> Callable[[str, str, float, int], None]:
    def observe(replica: str, outcome: str, latency: float, inflight: int) -> None:
        metrics.inference_requests.labels(replica, outcome).inc()
        if outcome == "ok":
            metrics.inference_latency.labels(replica).observe(latency)
    return observe


def _replica_state(pool: ReplicaPool, url: str, index: int) -> Callable[[], float]:
    def read() -> float:
        return float(pool.replica_states()[url][index])
    return read


def check_output_topics(settings: Settings, timeout_s: float = 15.0) -> None:
    """Fail fast with a clear message if an output topic is missing (librdkafka would otherwise
    retry each record for ``delivery.timeout.ms`` and then fail it)."""
    needed = [settings.kafka.labels_topic, settings.kafka.dead_letter_topic]
    if settings.output.reasoning == "separate":
        needed.append(settings.kafka.reasoning_topic)
    try:
        meta = AdminClient(admin_config(settings)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise FatalError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc
    missing = [t for t in needed if t not in meta.topics]
    if missing:
        raise FatalError(f"output topics do not exist: {missing}; create them before starting the consumer")


async def run_consumer(
    settings: Settings,
    *,
    until_idle: float | None = None,
    registry: CollectorRegistry | None = None,
    on_pipeline: Callable[[Pipeline], None] | None = None,
) -> None:
    """Run the consumer until SIGTERM/SIGINT or idle. Raises ConfigError/FatalError on failure."""
    policies = load_policies(settings.policies.dir)
    router = Router(policies, settings.policies.routes, settings.policies.default)
    metrics = build_metrics(registry)
    for p in policies.values():
        metrics.policy_info.labels(p.id, p.version).set(1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, check_output_topics, settings)
    api_key = settings.replicas.api_key.get_secret_value() if settings.replicas.api_key else None
    async with ReplicaPool(
        settings.replicas.urls,
        max_inflight_per_replica=settings.replicas.max_inflight_per_replica,
        request_timeout_s=settings.replicas.request_timeout_s,
        api_key=api_key,
        observer=pool_observer(metrics),
    ) as pool:
        for url in settings.replicas.urls:
            metrics.replica_healthy.labels(url).set_function(_replica_state(pool, url, 0))
            metrics.inflight_requests.labels(url).set_function(_replica_state(pool, url, 1))
        pipeline = Pipeline(settings, router, pool, metrics)
        if on_pipeline is not None:
            on_pipeline(pipeline)
        http = None
        if settings.metrics.port:
            http = await start_health_server(health_app(metrics.registry, lambda: pipeline.ready),
                                             settings.metrics.port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, pipeline.stop)
        log.info("policies loaded %s", {p.id: p.version for p in policies.values()})
        try:
            await pipeline.run(until_idle=until_idle)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            if http is not None:
                await http.cleanup()
