"""Runs our production consumer in its own process and measures it: ``python -m streams.bench.worker
CONFIG N``. Prints one JSON line: wall time from the first consumed event to the last event settled,
this process's CPU time over that window (start-up and imports excluded; replicas and broker are
other processes), and that CPU split by thread kind (Linux ``/proc``): the event loop, the Kafka
consumer hand-off thread, and librdkafka's own threads."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from streams import aio
from streams.app import run_consumer
from streams.config import load_settings
from streams.pipeline import Pipeline


async def main(config: str, n: int) -> dict[str, Any]:
    holder: list[Pipeline] = []
    task = asyncio.create_task(run_consumer(load_settings(config), on_pipeline=holder.append))
    while not holder:
        await asyncio.sleep(0.01)
    pipeline = holder[0]
    while pipeline.consumed == 0:
        if task.done():
            task.result()
        await asyncio.sleep(0.001)
    t0, c0, threads0 = time.monotonic(), time.process_time(), thread_cpu()
    while pipeline.consumed < n or pipeline.inflight_events:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    wall, cpu, threads1 = time.monotonic() - t0, time.process_time() - c0, thread_cpu()
    pipeline.stop()
    await task
    split = {kind: round(threads1[kind] - threads0.get(kind, 0.0), 3) for kind in threads1}
    return {"events": n, "wall_s": wall, "cpu_s": cpu, "cpu_s_by_thread": split}


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far per thread kind, from /proc; empty where there is no /proc."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    main_tid = str(os.getpid())
    for task_dir in Path("/proc/self/task").glob("*"):
        try:
            name = (task_dir / "comm").read_text().strip()
            fields = (task_dir / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        kind = "event_loop" if task_dir.name == main_tid else "librdkafka" if name.startswith("rdk:") else "other"
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


if __name__ == "__main__":
    result = aio.run(main(sys.argv[1], int(sys.argv[2])))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
