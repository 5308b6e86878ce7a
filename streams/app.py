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
from streams.metrics import Children, Metrics, build_metrics, register_cache
from streams.pipeline import Pipeline
from streams.policies import Policy, load_policies
from streams.policy_topic import PolicyTopicReader
from streams.registry import DirectoryWatcher, PolicyRegistry
from streams.replicas.pool import ReplicaPool

log = logging.getLogger(__name__)


def pool_observer(metrics: Metrics) -> Callable[[str, str, float, int], None]:
    requests, latency_of = Children(metrics.inference_requests), Children(metrics.inference_latency)

    def observe(replica: str, outcome: str, latency: float, inflight: int) -> None:
        requests(replica, outcome).inc()
        if outcome == "ok":
            latency_of(replica).observe(latency)
    return observe


def _replica_state(pool: ReplicaPool, url: str, index: int) -> Callable[[], float]:
    def read() -> float:
        return float(pool.replica_states()[url][index])
    return read


def shadow_topic(settings: Settings) -> str:
    return settings.kafka.labels_topic + ".shadow"


def _existing_topics(settings: Settings, timeout_s: float) -> set[str]:
    try:
        return set(AdminClient(admin_config(settings)).list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise FatalError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc


def check_output_topics(settings: Settings, *, shadow: bool = False, timeout_s: float = 15.0) -> None:
    """Fail fast with a clear message if an output topic is missing (librdkafka would otherwise
    retry each record for ``delivery.timeout.ms`` and then fail it)."""
    needed = [settings.kafka.labels_topic, settings.kafka.dead_letter_topic]
    if settings.output.reasoning == "separate":
        needed.append(settings.kafka.reasoning_topic)
    if shadow:
        needed.append(shadow_topic(settings))
    missing = [t for t in needed if t not in _existing_topics(settings, timeout_s)]
    if missing:
        raise FatalError(f"output topics do not exist: {missing}; create them before starting the consumer")


def build_registry(settings: Settings, metrics: Metrics) -> PolicyRegistry:
    """Policies from ``policies.dir``, with metrics kept current and shadow topics checked on update."""
    shadow_ok: list[bool] = []

    def accept(policy: Policy) -> str | None:
        if policy.meta.shadow and not shadow_ok:
            if shadow_topic(settings) not in _existing_topics(settings, 5.0):
                return f"shadow policy needs topic {shadow_topic(settings)!r}, which does not exist"
            shadow_ok.append(True)
        return None

    def changed(old: Policy | None, new: Policy | None) -> None:
        if old is not None:
            with contextlib.suppress(KeyError):
                metrics.policy_info.remove(old.id, old.version)
        if new is not None:
            metrics.policy_info.labels(new.id, new.version).set(1)

    policies = load_policies(settings.policies.dir)
    for p in policies.values():
        changed(None, p)
    if any(p.meta.shadow for p in policies.values()):
        shadow_ok.append(True)  # checked with the other output topics at start-up
    return PolicyRegistry(policies, settings.policies.routes, settings.policies.default,
                          on_change=changed, accept=accept)


async def run_consumer(
    settings: Settings,
    *,
    until_idle: float | None = None,
    registry: CollectorRegistry | None = None,
    on_pipeline: Callable[[Pipeline], None] | None = None,
) -> None:
    """Run the consumer until SIGTERM/SIGINT or idle. Raises ConfigError/FatalError on failure."""
    metrics = build_metrics(registry)
    policies = build_registry(settings, metrics)
    loop = asyncio.get_running_loop()
    shadow = any(p.meta.shadow for p in policies.policies.values())
    await loop.run_in_executor(None, lambda: check_output_topics(settings, shadow=shadow))
    background: list[asyncio.Task[None]] = []
    if settings.kafka.policies_topic:
        reader = PolicyTopicReader(settings, policies)
        await loop.run_in_executor(None, reader.catch_up)
        background.append(asyncio.create_task(reader.run()))
    if settings.policies.reload_interval_s > 0:
        watcher = DirectoryWatcher(settings.policies.dir, policies, settings.policies.reload_interval_s)
        background.append(asyncio.create_task(watcher.run()))
    api_key = settings.replicas.api_key.get_secret_value() if settings.replicas.api_key else None
    try:
        async with ReplicaPool(
            settings.replicas.urls,
            max_inflight_per_replica=settings.replicas.max_inflight_per_replica,
            request_timeout_s=settings.replicas.request_timeout_s,
            api_key=api_key,
            adaptive=settings.replicas.adaptive_concurrency,
            reaction_s=settings.batching.io_batch_ms / 1000,
            observer=pool_observer(metrics),
        ) as pool:
            for url in settings.replicas.urls:
                metrics.replica_healthy.labels(url).set_function(_replica_state(pool, url, 0))
                metrics.inflight_requests.labels(url).set_function(_replica_state(pool, url, 1))
                metrics.concurrency_limit.labels(url).set_function(_replica_state(pool, url, 2))
            pipeline = Pipeline(settings, policies, pool, metrics)
            cache = pipeline.cache
            if cache is not None:
                register_cache(metrics, lambda: (cache.lookups, cache.hits, len(cache), cache.bytes))
            if on_pipeline is not None:
                on_pipeline(pipeline)
            await _serve(settings, pipeline, metrics, until_idle)
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _serve(settings: Settings, pipeline: Pipeline, metrics: Metrics, until_idle: float | None) -> None:
    loop = asyncio.get_running_loop()
    http = None
    if settings.metrics.port:
        http = await start_health_server(health_app(metrics.registry, lambda: pipeline.ready), settings.metrics.port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, pipeline.stop)
    try:
        await pipeline.run(until_idle=until_idle)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        if http is not None:
            await http.cleanup()
