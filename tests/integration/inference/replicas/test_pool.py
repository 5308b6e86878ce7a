"""Replica pool and client against real HTTP simulators."""

from __future__ import annotations

import asyncio
import json
import time

from streams.config import ReplicaSettings
from streams.devtools.broker import free_port
from streams.inference.labeler import Labeler
from streams.inference.prompt import build_request
from streams.inference.replicas.client import ReplicaClient
from streams.inference.replicas.pool import ReplicaPool
from streams.policy.model import load_policies
from tests.integration.helpers import ROOT, safeguard

POLICIES = load_policies(ROOT / "policies")
MODEL = "openai/gpt-oss-safeguard-20b"


def body(text: str) -> dict:
    return build_request(POLICIES["spam"], text, model=MODEL, reasoning_effort="low")


async def test_least_outstanding_spreads_load(sims) -> None:
    urls = sims(2, time_scale=5.0).urls
    seen: dict[str, int] = {}

    def observe(replica: str, outcome: str, latency: float, inflight: int) -> None:
        seen[replica] = seen.get(replica, 0) + 1

    async with ReplicaPool(ReplicaSettings(urls=urls), observer=observe) as pool:
        results = await asyncio.gather(*(pool.chat(body(f"message {i}")) for i in range(60)))
    assert all(r.content for r in results)
    assert set(seen) == set(urls)
    assert min(seen.values()) >= 20  # neither replica was starved


async def test_dead_replica_is_retried_elsewhere_and_taken_out(sims) -> None:
    alive = sims(1).urls[0]
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here: connection refused
    async with ReplicaPool(ReplicaSettings(urls=[dead, alive]), backoff_base_s=0.01, backoff_max_s=0.05) as pool:
        results = await asyncio.gather(*(pool.chat(body(f"m{i}")) for i in range(30)))
        assert {r.replica for r in results} == {alive}
        assert pool.replica_states()[dead][0] is False
        assert pool.healthy_count == 1


async def test_inflight_cap_is_respected(sims) -> None:
    url = sims(1, time_scale=2.0).urls[0]
    peak = 0

    async with ReplicaPool(ReplicaSettings(urls=[url], max_inflight_per_replica=4)) as pool:
        async def one(i: int) -> None:
            nonlocal peak
            task = asyncio.ensure_future(pool.chat(body(f"x{i}")))
            await asyncio.sleep(0)
            peak = max(peak, pool.inflight)
            await task

        await asyncio.gather(*(one(i) for i in range(20)))
    assert peak == 4


async def test_waiting_counts_requests_queued_for_a_slot(sims) -> None:
    """What the pipeline's backpressure reads: requests queued here, not yet sent to a replica, and
    the slots the replicas have free."""
    url = sims(1, time_scale=2.0).urls[0]
    async with ReplicaPool(ReplicaSettings(urls=[url], max_inflight_per_replica=4)) as pool:
        tasks = [asyncio.ensure_future(pool.chat(body(f"w{i}"))) for i in range(20)]
        await asyncio.sleep(0)
        assert (pool.inflight, pool.waiting, pool.free_slots) == (4, 16, 0)
        await asyncio.gather(*tasks)
        assert (pool.inflight, pool.waiting, pool.free_slots, pool.answered) == (0, 0, 4, 20)


async def test_replicas_of_different_sizes_each_run_full_without_a_long_queue(sims) -> None:
    """A 32-slot replica next to a 256-slot one, both behind a 256 in-flight limit, under more load
    than both can run: the small one's limit must come down to what it runs (a fixed 256 would queue
    ~224 there) while both stay full."""
    small = sims(1, time_scale=5.0, extra_args=["--max-num-seqs", "32"]).urls[0]
    big = sims(1, time_scale=5.0).urls[0]
    stop = time.monotonic() + 12.0
    samples: dict[str, list[tuple[float, float]]] = {small: [], big: []}

    async with ReplicaPool(ReplicaSettings(urls=[small, big], max_inflight_per_replica=256)) as pool:
        async def load(i: int) -> None:
            while time.monotonic() < stop:
                await pool.chat(body(f"load {i}"))
                i += 1000

        async def watch() -> None:
            clients = {url: ReplicaClient(url, api_key=None, timeout_s=5.0) for url in samples}
            await asyncio.sleep(5.0)  # the limits settle first
            while time.monotonic() < stop - 0.5:
                for url, client in clients.items():
                    state = await client.queue_state()
                    assert state is not None and state.running is not None
                    samples[url].append((state.waiting, state.running))
                await asyncio.sleep(0.25)
            for client in clients.values():
                client.close()

        await asyncio.gather(watch(), *(load(i) for i in range(320)))
        limits = {url: limit for url, (_, _, limit) in pool.replica_states().items()}

    def mean(url: str, i: int) -> float:
        return sum(s[i] for s in samples[url]) / len(samples[url])

    assert len(samples[small]) >= 10
    assert mean(small, 0) <= 12, (limits, samples[small])  # waiting: near the target of 4, not ~224
    assert mean(small, 1) >= 0.9 * 32, samples[small]  # still full
    assert mean(big, 1) >= 0.9 * 256, samples[big]
    assert limits[small] < 64 and limits[big] == 256


async def test_reasoning_content_fallback(sims) -> None:
    url = sims(1, extra_args=["--reasoning-field", "reasoning_content"]).urls[0]
    replicas = ReplicaSettings(urls=[url], model=MODEL, max_attempts=2)
    async with ReplicaPool(replicas) as pool:
        d = await Labeler(pool, replicas, default_effort="low").decide(POLICIES["spam"], "hi")
    assert d.reasoning and "simulated" in d.reasoning


def test_classify_cli(sims, answer_key) -> None:
    key = answer_key([{"text": "win a free phone at scam.example", "label": 1, "category": "SP2"}])
    url = sims(1, answer_key=key).urls[0]
    proc = safeguard("classify", "--policy", str(ROOT / "policies/spam.md"), "--text",
                     "win a free phone at scam.example", "--replica", url, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["violation"] is True and doc["category"] == "SP2" and doc["reasoning"]
    assert doc["policy_version"].startswith("1-")


def test_classify_cli_unreachable_replica_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = safeguard("classify", "--policy", str(ROOT / "policies/spam.md"), "--text", "hi", "--replica", url,
                     timeout=60)
    assert proc.returncode == 1
    assert "replica unavailable" in proc.stderr
