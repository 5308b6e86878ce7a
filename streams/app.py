"""Assembly of the production consumer: settings -> policies -> replicas -> stages -> pipeline -> endpoints.

Only wiring lives here; behaviour lives in the parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from streams.cascade.live import LiveCascade
from streams.cascade.registry import Prefilters
from streams.config import Settings
from streams.engine.backpressure import Backpressure, FlowControl
from streams.engine.delivery import AtLeastOnce, Delivery, ExactlyOnce, Ledger
from streams.engine.lanes import Lanes
from streams.engine.outputs import Outputs
from streams.engine.pipeline import Pipeline
from streams.engine.provisional import NoReplicas, ProvisionalOutputs, Settle
from streams.engine.stages import Decode, Dedupe, Prefilter, Route, Stage
from streams.errors import ConfigError, FatalError, RetryableError
from streams.inference.cache import DedupeCache
from streams.inference.labeler import Decision, Labeler, decision_bytes
from streams.inference.replicas.pool import ReplicaPool
from streams.interventions.actions import check_rules
from streams.interventions.provisional import ProvisionalRules
from streams.kafka.admin import existing_topics, require_topics
from streams.kafka.config import transactional_id
from streams.kafka.producer import OutputProducer
from streams.ops.metrics import Children, Metrics, build_metrics, register_cache
from streams.ops.service import background, serving
from streams.policy.model import Policy, load_policies
from streams.policy.registry import DirectoryWatcher, PolicyRegistry
from streams.policy.topic import PolicyTopicReader
from streams.wire.catalogue import Writer, output_topics, subjects
from streams.wire.codec import Decoder, Encoder

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop where available (less CPU per event on the consumer's hot path,
    docs/performance.md), on the standard asyncio loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def build_registry(settings: Settings, metrics: Metrics) -> PolicyRegistry:
    """Policies from ``policies.dir``, with metrics kept current and shadow topics checked on update."""
    shadow_ok: list[bool] = []

    def accept(policy: Policy) -> str | None:
        if policy.meta.shadow and not shadow_ok:
            topic = settings.kafka.shadow_labels_topic
            if topic not in existing_topics(settings.kafka, 5.0):
                return f"shadow policy needs topic {topic!r}, which does not exist"
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


def build_stages(settings: Settings, policies: PolicyRegistry, labeler: Labeler, metrics: Metrics, *,
                 cached: bool, prefilters: Prefilters | None = None, live: LiveCascade | None = None) -> list[Stage]:
    """The stages before inference, in order (docs/architecture.md)."""
    stages: list[Stage] = [Decode(Decoder(settings.input, settings.schema_registry)),
                           Route(policies, settings.policies.mode)]
    if prefilters is not None:
        p = settings.prefilter
        stages.append(Prefilter(prefilters, p.audit_rate, metrics, live or LiveCascade(p, metrics),
                                drift_audit_rate=p.drift_audit_rate))
    if cached:
        stages.append(Dedupe(labeler))
    return stages


def build_delivery(settings: Settings) -> Delivery:
    interval = settings.batching.commit_interval_s
    if settings.delivery == "exactly_once":
        producer = OutputProducer(settings.kafka, transactional_id(settings.kafka))
        return ExactlyOnce(Ledger(), producer, commit_interval_s=interval,
                           auto_offset_reset=settings.kafka.auto_offset_reset)
    return AtLeastOnce(Ledger(), OutputProducer(settings.kafka), commit_interval_s=interval)


def load_prefilters(settings: Settings, metrics: Metrics) -> Prefilters | None:
    """The cascade's prefilters from ``prefilter.dir`` (None when it is not set). Raises ConfigError
    when the directory does not exist (a typo would otherwise silently send everything to the GPUs)."""
    directory = settings.prefilter.dir
    if directory is None:
        return None
    if not directory.is_dir():
        raise ConfigError(f"prefilter.dir {directory} is not a directory")
    prefilters = Prefilters(directory, metrics)
    prefilters.scan()
    return prefilters


REGISTER_WAIT_S = 10.0


def register_output_schemas(settings: Settings, encoder: Encoder, *, writer: Writer = "reasoning",
                            shadow: bool = False) -> None:
    """With ``output.format: avro``, register the schemas of what ``writer`` writes (the output
    catalogue) before consuming anything, so no model call is spent on an event whose outputs could
    not be written; waits up to ``REGISTER_WAIT_S`` for an unreachable registry, then raises
    FatalError naming it."""
    deadline, delay = time.monotonic() + REGISTER_WAIT_S, 0.5
    while True:
        try:
            encoder.register(subjects(settings, writer=writer, shadow=shadow))
            return
        except RetryableError as exc:
            if time.monotonic() + delay > deadline:
                raise FatalError(f"{exc} (output.format avro: the output schemas must be registered before "
                                 f"consuming; waited {REGISTER_WAIT_S:.0f} s)") from exc
            log.warning("waiting for the schema registry: %s", exc)
            time.sleep(delay)
            delay *= 2


def pool_observer(metrics: Metrics) -> Callable[[str, str, float, int], None]:
    requests, latency_of = Children(metrics.inference_requests), Children(metrics.inference_latency)

    work = metrics.work_rate

    def observe(replica: str, outcome: str, latency: float, inflight: int) -> None:
        requests(replica, outcome).inc()
        if outcome == "ok":
            latency_of(replica).observe(latency)
            work.add_model_seconds(latency)
    return observe


def _replica_state(pool: ReplicaPool, url: str, index: int) -> Callable[[], float]:
    def read() -> float:
        return float(pool.replica_states()[url][index])
    return read


def build_pipeline(settings: Settings, policies: PolicyRegistry, pool: ReplicaPool, metrics: Metrics, *,
                   prefilters: Prefilters | None = None, encoder: Encoder | None = None,
                   delivery: Delivery | None = None,
                   consumer_factory: Callable[[dict[str, Any]], Any] = Consumer) -> Pipeline:
    """The event path over an open replica pool: cache, labeler, stages, outputs, delivery, flow
    control. ``delivery`` and ``consumer_factory`` replace the Kafka clients (unit tests)."""
    cache: DedupeCache[Decision] | None = None
    if settings.cache.max_entries:
        cache = DedupeCache(settings.cache.max_entries, max_bytes=settings.cache.max_bytes, size=decision_bytes)
        c = cache
        register_cache(metrics, lambda: (c.lookups, c.hits, len(c), c.bytes))
    effort = settings.policies.reasoning_effort
    labeler = Labeler(pool, settings.replicas, default_effort=effort, cache=cache)
    live = LiveCascade(settings.prefilter, metrics) if prefilters is not None else None
    outputs = Outputs(settings, encoder or Encoder(settings.output, settings.schema_registry), metrics)
    flow = FlowControl(Backpressure(settings.batching.max_inflight_events, settings.batching.max_poll_records))
    stages = build_stages(settings, policies, labeler, metrics, cached=cache is not None, prefilters=prefilters,
                          live=live)

    def decided() -> int:
        return pool.answered + (cache.hits if cache is not None else 0)

    provisional = settings.actions.provisional
    return Pipeline(settings.kafka, settings.batching, stages=stages, labeler=labeler, outputs=outputs,
                    delivery=delivery or build_delivery(settings), flow=flow, pool=pool, metrics=metrics,
                    decided=decided, deadline_s=provisional.deadline_s if provisional is not None else None,
                    lanes=Lanes(policies.topic_lane) if Lanes.needed(settings.kafka.input_topics, policies.topic_lane)
                    else None, consumer_factory=consumer_factory)


def provisional_settings(settings: Settings) -> Settings:
    """The provisional consumer's settings: its own group (``<group_id>-provisional``) and, under
    exactly-once, its own transactional id, so it never fences or is fenced by the reasoning consumer."""
    if settings.actions.provisional is None:
        raise ConfigError("safeguard run --provisional needs actions.provisional (and actions.topic): the rules "
                          "of the decision made before the model answers (docs/interventions.md, \"Two-speed "
                          "moderation\")")
    k = settings.kafka
    kafka = k.model_copy(update={"group_id": f"{k.group_id}-provisional",
                                 "transactional_id": f"{k.transactional_id}-provisional" if k.transactional_id
                                 else None,
                                 "librdkafka": PROVISIONAL_LIBRDKAFKA | k.librdkafka})
    return settings.model_copy(update={"kafka": kafka})


# The provisional consumer is there for latency, and has no model round trip to hide its own: a
# fetch that returns within 5 ms of a record's arrival (librdkafka's default waits up to 500 ms
# for more data; a broker that does not wake a waiting fetch early, like the embedded Tansu, waits
# all of it) and decisions sent within 1 ms (50 ms for the reasoning consumer's labels, batched
# for throughput). kafka.librdkafka overrides either.
PROVISIONAL_LIBRDKAFKA: dict[str, Any] = {"fetch.wait.max.ms": 5, "linger.ms": 1}
PROVISIONAL_POLL_S = 0.005  # the poll loop's wait for records: a record waits at most this long in the client


def build_provisional_pipeline(settings: Settings, policies: PolicyRegistry, metrics: Metrics, *,
                               prefilters: Prefilters | None = None, encoder: Encoder | None = None,
                               delivery: Delivery | None = None,
                               consumer_factory: Callable[[dict[str, Any]], Any] = Consumer) -> Pipeline:
    """The provisional consumer's event path (:mod:`streams.engine.provisional`): the reasoning
    consumer's stages before inference, then ``settle``; no replica. ``settings`` as
    :func:`provisional_settings` makes them. The prefilter's own metrics stay out of this
    consumer's registry: the reasoning consumer's cascade is the one of record."""
    assert settings.actions.provisional is not None
    rules = ProvisionalRules(settings.actions.provisional, settings.prefilter.audit_rate)
    stages: list[Stage] = [Decode(Decoder(settings.input, settings.schema_registry)),
                           Route(policies, settings.policies.mode)]
    if prefilters is not None:
        quiet = build_metrics(CollectorRegistry())
        p = settings.prefilter
        stages.append(Prefilter(prefilters, p.audit_rate, quiet, LiveCascade(p, quiet),
                                drift_audit_rate=p.drift_audit_rate))
    stages.append(Settle(rules))
    outputs = ProvisionalOutputs(settings, rules, encoder or Encoder(settings.output, settings.schema_registry),
                                 metrics)
    b = settings.batching
    flow = FlowControl(Backpressure(b.max_inflight_events, b.max_poll_records), poll_s=PROVISIONAL_POLL_S)
    pool = NoReplicas(b.max_poll_records)
    consumed: list[Pipeline] = []
    pipeline = Pipeline(settings.kafka, b, stages=stages, labeler=None, outputs=outputs,
                        delivery=delivery or build_delivery(settings), flow=flow, pool=pool, metrics=metrics,
                        decided=lambda: consumed[0].consumed if consumed else 0, consumer_factory=consumer_factory)
    consumed.append(pipeline)
    return pipeline


async def run_consumer(
    settings: Settings,
    *,
    until_idle: float | None = None,
    registry: CollectorRegistry | None = None,
    on_pipeline: Callable[[Pipeline], None] | None = None,
    on_policies: Callable[[PolicyRegistry], None] | None = None,
    provisional: bool = False,
) -> None:
    """Run the consumer until SIGTERM/SIGINT or idle. Raises ConfigError/FatalError on failure.

    ``provisional``: the provisional consumer (``safeguard run --provisional``) instead of the
    reasoning one. ``on_pipeline`` and ``on_policies`` hand the running pipeline and the live policy
    registry to an embedder (the demo, the bench, tests) as soon as they exist."""
    writer: Writer = "reasoning"
    if provisional:
        settings, writer = provisional_settings(settings), "provisional"
    metrics = build_metrics(registry)
    policies = build_registry(settings, metrics)
    if on_policies is not None:
        on_policies(policies)
    loop = asyncio.get_running_loop()
    shadow = any(p.meta.shadow for p in policies.policies.values())
    topics = output_topics(settings, writer=writer, shadow=shadow)
    await loop.run_in_executor(None, lambda: require_topics(settings.kafka, topics))
    encoder = Encoder(settings.output, settings.schema_registry)
    await loop.run_in_executor(None, lambda: register_output_schemas(settings, encoder, writer=writer, shadow=shadow))
    async with contextlib.AsyncExitStack() as stack:  # undone in reverse, whatever raises
        if settings.kafka.policies_topic:
            reader = PolicyTopicReader(settings.kafka, policies)
            await loop.run_in_executor(None, reader.catch_up)
            background(stack, reader.run())
        # after the policies topic: rules may name its policies
        check_rules(settings.actions, policies.policies)
        if settings.policies.reload_interval_s > 0:
            watcher = DirectoryWatcher(settings.policies.dir, policies, settings.policies.reload_interval_s)
            background(stack, watcher.run())
        prefilters = load_prefilters(settings, build_metrics(CollectorRegistry()) if provisional else metrics)
        if prefilters is not None and settings.policies.reload_interval_s > 0:
            background(stack, prefilters.run(settings.policies.reload_interval_s))
        if provisional:
            pipeline = build_provisional_pipeline(settings, policies, metrics, prefilters=prefilters, encoder=encoder)
        else:
            pool = await stack.enter_async_context(ReplicaPool(settings.replicas,
                                                               reaction_s=settings.batching.io_batch_ms / 1000,
                                                               observer=pool_observer(metrics)))
            for url in settings.replicas.urls:
                metrics.replica_healthy.labels(url).set_function(_replica_state(pool, url, 0))
                metrics.inflight_requests.labels(url).set_function(_replica_state(pool, url, 1))
                metrics.concurrency_limit.labels(url).set_function(_replica_state(pool, url, 2))
            pipeline = build_pipeline(settings, policies, pool, metrics, prefilters=prefilters, encoder=encoder)
            if settings.replicas.priority:
                log.info("replicas.priority: requests carry vLLM's priority (their lane: 0 urgent, then the routes' "
                         "priorities). It is in force only on replicas started with --scheduling-policy priority "
                         "(safeguard serve-replica --priority); an fcfs replica accepts the field and ignores it, with "
                         "no error. To check a replica: its start-up log lists scheduling_policy='priority' among the "
                         "non-default args (docs/interventions.md, \"Lanes\")")
        metrics.ready.set_function(lambda: float(pipeline.ready))
        if on_pipeline is not None:
            on_pipeline(pipeline)
        await stack.enter_async_context(serving(pipeline.stop, port=settings.metrics.port, registry=metrics.registry,
                                                ready=lambda: pipeline.ready))
        await pipeline.run(until_idle=until_idle)
