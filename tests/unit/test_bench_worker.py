"""The benchmark's per-thread CPU accounting (Linux /proc)."""

from __future__ import annotations

import sys
import time

import pytest

from streams.bench.worker import thread_cpu


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")
def test_thread_cpu_charges_the_calling_thread() -> None:
    before = thread_cpu()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        sum(range(1000))
    after = thread_cpu()
    assert after["event_loop"] - before.get("event_loop", 0.0) >= 0.2
    assert all(v >= 0 for v in after.values())
