"""Metrics helpers: consumer lag from librdkafka statistics, the dedupe cache collector."""

from __future__ import annotations

import orjson

from streams.ops.metrics import lags_from_stats


def test_lags_from_stats_keeps_known_partition_lags() -> None:
    doc = {"topics": {"in": {"partitions": {"0": {"consumer_lag": 7}, "1": {"consumer_lag": -1},
                                            "-1": {"consumer_lag": 3}, "2": {"consumer_lag": 0}}},
                      "other": {}}}
    assert sorted(lags_from_stats(orjson.dumps(doc).decode())) == [("in", 0, 7), ("in", 2, 0)]
    assert list(lags_from_stats("not json")) == []


def test_cache_metrics_read_the_cache_at_scrape_time() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from streams.ops.metrics import build_metrics, register_cache

    state = [10, 4, 6, 9000]
    metrics = build_metrics(CollectorRegistry())
    register_cache(metrics, lambda: (state[0], state[1], state[2], state[3]))
    state[:] = [12, 5, 7, 10_500]  # changes after registration are what a scrape sees
    text = generate_latest(metrics.registry).decode()
    for line in ("safeguard_cache_lookups_total 12.0", "safeguard_cache_hits_total 5.0",
                 "safeguard_cache_entries 7.0", "safeguard_cache_bytes 10500.0"):
        assert line in text.splitlines(), line


def test_work_rate_is_model_seconds_per_settled_event_over_its_window() -> None:
    from streams.ops.metrics import WorkRate

    now = [0.0]
    rate = WorkRate(window_s=60, buckets=12, clock=lambda: now[0])
    assert rate.per_event() is None  # nothing known yet
    for _ in range(10):
        rate.add_model_seconds(2.0)  # ten events, one 2 s request each
        rate.add_events()
    rate.add_events(10)  # ten more the cache or the prefilter decided: no model time
    assert rate.per_event() == 1.0
    now[0] = 30.0
    rate.add_model_seconds(8.0)  # one long chat
    rate.add_events()
    assert rate.per_event() == 28.0 / 21
    now[0] = 200.0  # a quiet spell: the window is empty, the last value stays
    assert rate.per_event() == 28.0 / 21
    rate.add_model_seconds(1.0)
    rate.add_events()
    assert rate.per_event() == 1.0  # the old slices have left the window
