"""Runs our production consumer in its own process and measures it: ``python -m streams.devtools.bench.worker
CONFIG N [WARMUP]``. Prints one JSON line: wall time from the first measured event consumed to the
last event settled, this process's CPU time over that window (start-up and imports excluded;
replicas and broker are other processes), and that CPU split by thread kind (Linux ``/proc``): the
event loop, the Kafka consumer hand-off thread, and librdkafka's own threads.

With ``WARMUP`` > 0 the first ``WARMUP`` events are not measured: once they are all settled the
worker prints ``warm`` on a line of its own and measures the ``N`` events that come after (the
passthrough run warms the dedupe cache this way, so that its window holds no model call)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from streams.app import run, run_consumer
from streams.config import load_settings
from streams.engine.pipeline import Pipeline


async def main(config: str, n: int, warmup: int = 0) -> dict[str, Any]:
    holder: list[Pipeline] = []
    task = asyncio.create_task(run_consumer(load_settings(config), on_pipeline=holder.append))

    async def until(done: Callable[[], bool], step: float) -> None:
        while not done():
            if task.done():
                task.result()  # the consumer stopped: raise its error
                raise RuntimeError("consumer exited before the benchmark's events were labelled")
            await asyncio.sleep(step)

    await until(lambda: bool(holder), 0.01)
    pipeline = holder[0]
    if warmup:
        await until(lambda: pipeline.consumed >= warmup and not pipeline.inflight_events, 0.01)
        sys.stdout.write("warm\n")
        sys.stdout.flush()
    await until(lambda: pipeline.consumed > warmup, 0.001)
    t0, c0, threads0 = time.monotonic(), time.process_time(), thread_cpu()
    await until(lambda: pipeline.consumed >= warmup + n, 0.05)
    # The end as closely as the start (the ideal client times its last answer exactly): a 50 ms poll
    # here added 25 ms on average to every run.
    await until(lambda: not pipeline.inflight_events, 0.002)
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
    result = run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
