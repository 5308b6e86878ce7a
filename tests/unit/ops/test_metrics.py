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
