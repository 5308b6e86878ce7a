from __future__ import annotations

import logging

import pytest

from streams.ops.logutil import RateLimitedLog


def test_floods_are_limited_per_key_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimitedLog(logging.getLogger("t"), interval_s=3600)
    with caplog.at_level(logging.WARNING):
        for i in range(100):
            limiter.log(logging.WARNING, "a", "failure %d", i)
        limiter.log(logging.WARNING, "b", "other")
    assert [r.getMessage() for r in caplog.records] == ["failure 0", "other"]
    limiter._last["a"] = -1e18  # the interval passed
    with caplog.at_level(logging.WARNING):
        limiter.log(logging.WARNING, "a", "failure again")
    assert caplog.records[-1].getMessage() == "failure again (99 similar suppressed)"
