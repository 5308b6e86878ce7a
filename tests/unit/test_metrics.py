"""Consumer lag from librdkafka statistics."""

from __future__ import annotations

import orjson

from streams.metrics import lags_from_stats


def test_lags_from_stats_keeps_known_partition_lags() -> None:
    doc = {"topics": {"in": {"partitions": {"0": {"consumer_lag": 7}, "1": {"consumer_lag": -1},
                                            "-1": {"consumer_lag": 3}, "2": {"consumer_lag": 0}}},
                      "other": {}}}
    assert sorted(lags_from_stats(orjson.dumps(doc).decode())) == [("in", 0, 7), ("in", 2, 0)]
    assert list(lags_from_stats("not json")) == []
