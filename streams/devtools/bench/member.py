"""One consumer of the scale bench's group: ``python -m streams.devtools.bench.member CONFIG``.

Runs the production consumer (:func:`streams.app.run_consumer`) until SIGTERM and prints a JSON
line ``{"assigned": [[topic, partition], ...]}`` each time its assignment changes, so the bench
starts its burst only once the whole group has settled (no rebalance inside the measured window).
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from streams.app import run, run_consumer
from streams.config import load_settings
from streams.engine.pipeline import Pipeline


async def main(config: str) -> None:
    holder: list[Pipeline] = []
    task = asyncio.create_task(run_consumer(load_settings(config), on_pipeline=holder.append))
    last: list[tuple[str, int]] | None = None
    while not task.done():
        if holder:
            now = sorted(holder[0].assigned)
            if now != last:
                sys.stdout.write(orjson.dumps({"assigned": now}).decode() + "\n")
                sys.stdout.flush()
                last = now
        await asyncio.wait({task}, timeout=0.1)
    task.result()


if __name__ == "__main__":
    run(main(sys.argv[1]))
