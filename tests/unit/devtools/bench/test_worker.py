"""The benchmark's per-thread CPU accounting (Linux /proc)."""

from __future__ import annotations

import time
from pathlib import Path

from streams.devtools.bench.worker import thread_cpu


def test_thread_cpu_charges_the_calling_thread() -> None:
    if not Path("/proc/self/task").is_dir():  # no /proc (not Linux): no split, and no error
        assert thread_cpu() == {}
        return
    before = thread_cpu()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        sum(range(1000))
    after = thread_cpu()
    assert after["event_loop"] - before.get("event_loop", 0.0) >= 0.2
    assert all(v >= 0 for v in after.values())
