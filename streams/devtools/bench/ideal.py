"""``ideal``: the replicas' capacity, measured straight over HTTP (no Kafka).

A saturating generator keeps exactly ``concurrency`` requests in flight per replica (the engine's
``max_num_seqs``): every running slot is always busy and nothing waits in the engine's queue, which
is what a perfect consumer would do. Throughput is completed requests over the run; latency is per
request (``p50_s``/``p99_s``) and, for comparison with the pipeline's ``e2e_*``, from the start of
the burst to each completion (every request "arrives" at once, as the pipeline's events do).
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import aiohttp
import orjson

from streams.inference.prompt import build_request
from streams.ops.capacity import STEADY_SHARE
from streams.policy.model import Policy, load_policy


async def saturate(urls: list[str], texts: list[str], *, model: str, concurrency: int) -> dict[str, Any]:
    policy = load_policy_cached()
    latencies: list[float] = []
    done_at: list[float] = []  # since the burst began: what a request sent at the start waits in all
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(url: str) -> None:
            while not queue.empty():
                text = queue.get_nowait()
                body = orjson.dumps(build_request(policy, text, model=model, reasoning_effort="low"))
                t0 = time.monotonic()
                async with session.post(url + "/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    resp.raise_for_status()
                latencies.append(time.monotonic() - t0)
                done_at.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(worker(u) for u in urls for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return summary(len(texts), elapsed, latencies, done_at)


def summary(n: int, elapsed: float, latencies: list[float], done_at: list[float]) -> dict[str, Any]:
    lat, e2e = sorted(latencies), sorted(done_at)
    return {"events": n, "elapsed_s": round(elapsed, 3), "events_per_s": round(n / elapsed, 2),
            "p50_s": round(percentile(lat, 0.50), 3), "p99_s": round(percentile(lat, 0.99), 3),
            "e2e_p50_s": round(percentile(e2e, 0.50), 3), "e2e_p99_s": round(percentile(e2e, 0.99), 3),
            "steady_events_per_s": round(steady_rate(done_at), 2)}


def steady_rate(done: list[float]) -> float:
    """Completions per second over the middle ``STEADY_SHARE`` of the sorted completion times."""
    done = sorted(done)
    edge = (1 - STEADY_SHARE) / 2
    lo, hi = int(len(done) * edge), int(len(done) * (1 - edge)) - 1
    span = done[hi] - done[lo]
    return (hi - lo) / span if span > 0 else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@functools.cache
def load_policy_cached() -> Policy:
    from streams.devtools.bench.workload import policy_path

    return load_policy(policy_path())
