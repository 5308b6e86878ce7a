"""Prometheus metrics (docs/operations.md lists them), built by a factory against an injected registry.

Label values stay bounded: topics, partitions, policies, replicas, outcomes; never an event id or
any content.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# From milliseconds (a provisional decision) to minutes (a final one behind a backlog).
DECISION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events_consumed: Counter
    labels_produced: Counter
    dead_letters: Counter
    inference_requests: Counter
    inference_latency: Histogram
    inflight_requests: Gauge
    concurrency_limit: Gauge
    event_latency: Histogram
    consumer_lag: Gauge
    replica_healthy: Gauge
    policy_info: Gauge
    prefilter_decisions: Counter
    prefilter_audit_misses: Counter
    prefilter_info: Gauge
    prefilter_evasion: Counter
    prefilter_recall_lower_bound: Gauge
    prefilter_threshold: Gauge
    prefilter_novel_threshold: Gauge
    prefilter_tightened: Gauge
    prefilter_drift: Gauge
    decisions: Counter
    decision_latency: Histogram
    interventions: Counter
    lane_wait: Histogram
    pending_work: Gauge
    ready: Gauge
    work_rate: WorkRate


def build_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Create every safeguard metric on ``registry`` (a fresh one if None)."""
    reg = registry if registry is not None else CollectorRegistry()
    return Metrics(
        registry=reg,
        events_consumed=Counter(
            "safeguard_events_consumed", "Content events read from input topics.", ["topic"], registry=reg
        ),
        labels_produced=Counter(
            "safeguard_labels_produced",
            "Label events acknowledged by the broker.",
            ["policy", "violation", "decided_by"],
            registry=reg,
        ),
        dead_letters=Counter(
            "safeguard_dead_letters", "Dead letters acknowledged by the broker.", ["error_type"], registry=reg
        ),
        inference_requests=Counter(
            "safeguard_inference_requests",
            "Chat completion requests by replica and outcome (ok, error).",
            ["replica", "outcome"],
            registry=reg,
        ),
        inference_latency=Histogram(
            "safeguard_inference_latency_seconds",
            "Latency of successful chat completion requests.",
            ["replica"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        inflight_requests=Gauge(
            "safeguard_inflight_requests", "Requests outstanding per replica.", ["replica"], registry=reg
        ),
        concurrency_limit=Gauge(
            "safeguard_replica_concurrency_limit", "Adaptive in-flight limit per replica.", ["replica"], registry=reg
        ),
        event_latency=Histogram(
            "safeguard_event_latency_seconds",
            "From consuming an event to the broker acknowledging all its labels or dead letters.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        consumer_lag=Gauge(
            "safeguard_consumer_lag", "Messages behind the high watermark.", ["topic", "partition"], registry=reg
        ),
        replica_healthy=Gauge(
            "safeguard_replica_healthy", "1 if the replica is in rotation.", ["replica"], registry=reg
        ),
        policy_info=Gauge(
            "safeguard_policy_info", "Loaded policies and their versions (value 1).", ["policy", "version"],
            registry=reg,
        ),
        prefilter_decisions=Counter(
            "safeguard_prefilter_decisions",
            "(event, policy) pairs a prefilter scored: skipped (decided without the model), sent (at or above "
            "its threshold), audited (below it, sent to the model anyway to measure recall).",
            ["policy", "outcome"], registry=reg,
        ),
        prefilter_audit_misses=Counter(
            "safeguard_prefilter_audit_misses",
            "Audited pairs the prefilter would have skipped and the model found violating (the live recall signal).",
            ["policy"], registry=reg,
        ),
        prefilter_info=Gauge(
            "safeguard_prefilter_info", "Loaded prefilters and the policy version each was trained for (value 1).",
            ["policy", "version"], registry=reg,
        ),
        prefilter_evasion=Counter(
            "safeguard_prefilter_evasion",
            "Pairs a prefilter would have scored but sent to the model for an evasion signal in the text "
            "(invisible_chars, mixed_script, spaced_letters, styled_letters, unusual_chars).",
            ["policy", "flag"], registry=reg,
        ),
        prefilter_recall_lower_bound=Gauge(
            "safeguard_prefilter_recall_lower_bound",
            "95% lower confidence bound on the prefilter's live recall at its current threshold, from the audit "
            "sample over the evidence window (low while evidence is thin: docs/cascade.md).",
            ["policy"], registry=reg,
        ),
        prefilter_threshold=Gauge(
            "safeguard_prefilter_threshold", "The prefilter's threshold in use, in log-odds (the trained one unless "
            "the controller tightened it; -Inf: every pair goes to the model).", ["policy"], registry=reg,
        ),
        prefilter_novel_threshold=Gauge(
            "safeguard_prefilter_novel_threshold", "The threshold in use for novel texts (unlike the training "
            "data), in log-odds: at most safeguard_prefilter_threshold; -Inf: every novel text goes to the model.",
            ["policy"], registry=reg,
        ),
        prefilter_tightened=Gauge(
            "safeguard_prefilter_tightened", "Log-odds the controller moved the lower of its thresholds (familiar or "
            "novel texts) below the trained one (0: not tightened; +Inf: some texts all go to the model).",
            ["policy"], registry=reg,
        ),
        prefilter_drift=Gauge(
            "safeguard_prefilter_drift", "Recent share of texts unlike the prefilter's training data, above the "
            "5% expected (0: none); above 0.1 novel texts are audited at prefilter.drift_audit_rate.",
            ["policy"], registry=reg,
        ),
        decisions=Counter(
            "safeguard_decisions", "Decision events acknowledged by the broker, by action.", ["action"],
            registry=reg,
        ),
        decision_latency=Histogram(
            "safeguard_decision_latency_seconds", "Record timestamp to decision acknowledged, by stage "
            "(provisional, final, deadline).", ["stage"], buckets=DECISION_BUCKETS, registry=reg,
        ),
        interventions=Counter(
            "safeguard_interventions", "Final decisions whose action differs from the provisional one, by the "
            "actions (from_action: provisional, to_action: final).", ["from_action", "to_action"], registry=reg,
        ),
        lane_wait=Histogram(
            "safeguard_lane_wait_seconds", "Record timestamp to the event's first model request sent, by lane "
            "(the route's priority; 0: urgent).", ["priority"], buckets=DECISION_BUCKETS, registry=reg,
        ),
        pending_work=Gauge(
            "safeguard_pending_work_seconds",
            "Consumer lag times the recent model seconds per settled event (replica latency summed over an "
            "event's requests; 0 for events the cache or the prefilter decided), for the partitions this member "
            "owns: the backlog in model time, for autoscaling on work rather than on messages.",
            ["topic"], registry=reg,
        ),
        ready=Gauge("safeguard_ready", "1 while /readyz answers ready (partitions assigned, a healthy replica, "
                    "no outage holding events), else 0.", registry=reg),
        work_rate=WorkRate(),
    )


class WorkRate:
    """Model seconds per settled event over the last ``window_s`` (in ``buckets`` slices): what one
    event of the recent traffic costs the replicas. Fed from the event loop (request latencies,
    settled events), read from the consumer's statistics callback."""

    def __init__(self, window_s: float = 60.0, buckets: int = 12, clock: Callable[[], float] = time.monotonic) -> None:
        self._width = window_s / buckets
        self._clock = clock
        self._slices: deque[list[float]] = deque(maxlen=buckets)  # [slice start, model seconds, events]
        self.last: float | None = None  # the last known value, kept through quiet periods

    def _slice(self) -> list[float]:
        now = self._clock()
        if not self._slices or now - self._slices[-1][0] >= self._width:
            self._slices.append([now, 0.0, 0.0])
        return self._slices[-1]

    def add_model_seconds(self, seconds: float) -> None:
        self._slice()[1] += seconds

    def add_events(self, n: int = 1) -> None:
        self._slice()[2] += n

    def per_event(self) -> float | None:
        """Seconds per event over the window; the last known value when no event settled in it."""
        horizon = self._clock() - self._width * (self._slices.maxlen or 1)
        # A copy in one step: this runs in the consumer's statistics callback while the event loop's
        # thread appends, and iterating the deque itself could meet "deque mutated during iteration".
        slices = tuple(self._slices)
        seconds = sum(s[1] for s in slices if s[0] >= horizon)
        events = sum(s[2] for s in slices if s[0] >= horizon)
        if events:
            self.last = seconds / events
        return self.last


def lags_from_stats(raw: str) -> Iterator[tuple[str, int, int]]:
    """(topic, partition, consumer lag) from a librdkafka statistics document; unknown lags skipped."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    for topic, tdata in (doc.get("topics") or {}).items():
        for part, pdata in (tdata.get("partitions") or {}).items():
            lag = pdata.get("consumer_lag", -1)
            if part != "-1" and isinstance(lag, int) and lag >= 0:
                yield topic, int(part), lag


class Children:
    """The label children of one metric, resolved once per distinct label values.

    ``metric.labels(...)`` validates and locks on every call (about 2.5 us); the per-event path
    keeps the children it has seen instead. Label values are bounded (see the module doc), so is this.
    """

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class _CacheCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        lookups, hits, entries, size = self._read()
        yield CounterMetricFamily("safeguard_cache_lookups", "Dedupe cache lookups.", value=lookups)
        yield CounterMetricFamily("safeguard_cache_hits", "Labels decided by the dedupe cache.", value=hits)
        yield GaugeMetricFamily("safeguard_cache_entries", "Decisions held by the dedupe cache.", value=entries)
        yield GaugeMetricFamily("safeguard_cache_bytes", "Estimated memory held by the dedupe cache's decisions "
                                "(bounded by cache.max_bytes).", value=size)


def register_cache(metrics: Metrics, read: Callable[[], tuple[int, int, int, int]]) -> None:
    """Expose the dedupe cache's (lookups, hits, entries, bytes) as ``safeguard_cache_{lookups,hits}_total``
    and the gauges ``safeguard_cache_entries`` and ``safeguard_cache_bytes``."""
    metrics.registry.register(_CacheCollector(read))
