"""Runs our production consumer in its own process and measures it: ``python -m streams.bench.worker
CONFIG N``. Prints one JSON line: wall time from the first consumed event to the last event settled,
and this process's CPU time over that window (start-up and imports excluded; replicas and broker
are other processes)."""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from streams import aio
from streams.app import run_consumer
from streams.config import load_settings
from streams.pipeline import Pipeline


async def main(config: str, n: int) -> dict[str, float]:
    holder: list[Pipeline] = []
    task = asyncio.create_task(run_consumer(load_settings(config), on_pipeline=holder.append))
    while not holder:
        await asyncio.sleep(0.01)
    pipeline = holder[0]
    while pipeline.consumed == 0:
        if task.done():
            task.result()
        await asyncio.sleep(0.001)
    t0, c0 = time.monotonic(), time.process_time()
    while pipeline.consumed < n or pipeline.inflight_events:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    pipeline.stop()
    await task
    return {"events": n, "wall_s": wall, "cpu_s": cpu}


if __name__ == "__main__":
    result = aio.run(main(sys.argv[1], int(sys.argv[2])))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
