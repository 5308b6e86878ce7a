"""The adaptive in-flight limit against the simulator's continuous-batching model, in virtual time.

A 32-slot replica next to a 256-slot one, both behind a 256 in-flight limit, under more load than
both can run (320 clients, each with one request outstanding): the small one's limit must come down
to what it runs (a fixed 256 would queue ~224 there) while both stay full. Routing is the pool's:
least outstanding among the replicas under their limit; each replica's queue is read once per
second as the pool scrapes it; a completion feeds the limit like the pool does.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from streams.devtools.sim.engine import BatchEngine, SimRequest
from streams.inference.replicas.adaptive import AimdLimit
from streams.ops.profiles import PROFILES, Profile

P20 = PROFILES["gpt-oss-safeguard-20b@h100"]


def simulate(profiles: list[Profile], *, clients: int, seconds: float, settle_s: float, maximum: int = 256,
             seed: int = 3) -> tuple[list[AimdLimit], list[list[tuple[int, int]]]]:
    """Run ``seconds`` of GPU time; returns the limits and (waiting, running) per scrape after ``settle_s``."""
    rng = random.Random(seed)
    engines = [BatchEngine(p) for p in profiles]
    limits = [AimdLimit(maximum=maximum) for _ in profiles]
    inflight = [0 for _ in profiles]
    samples: list[list[tuple[int, int]]] = [[] for _ in profiles]
    backlog, now, next_scrape = clients, 0.0, 1.0

    def dispatch() -> None:
        nonlocal backlog
        while backlog:
            room = [i for i in range(len(engines)) if inflight[i] < limits[i].value]
            if not room:
                return
            i = min(room, key=inflight.__getitem__)
            out = max(1, int(P20.reasoning_median["low"] * math.exp(rng.gauss(0.0, P20.reasoning_sigma))))
            request = SimRequest(prompt_tokens=520, output_tokens=out + 40, prefix_key=1, prefix_tokens=460,
                                 prompt_key=rng.getrandbits(62))
            inflight[i] += 1
            backlog -= 1
            for _ in engines[i].submit(request, now):
                done(i)

    def done(i: int) -> None:
        nonlocal backlog
        inflight[i] -= 1
        limits[i].on_success(inflight[i])
        backlog += 1  # the client sends its next request

    dispatch()
    while now < seconds:
        events = [now + dt for e in engines if (dt := e.next_event_in()) is not None]
        now = min([*events, next_scrape])
        for i, engine in enumerate(engines):
            for _ in engine.advance(now):
                done(i)
        if now >= next_scrape - 1e-9:
            for i, engine in enumerate(engines):
                limits[i].observe_queue(engine.waiting, now, engine.running, inflight[i])
                if now >= settle_s:
                    samples[i].append((engine.waiting, engine.running))
            next_scrape += 1.0
        dispatch()
    return limits, samples


def test_replicas_of_different_sizes_each_run_full_without_a_long_queue() -> None:
    small, big = replace(P20, max_num_seqs=32), P20
    (small_limit, big_limit), (small_seen, big_seen) = simulate([small, big], clients=320, seconds=120.0,
                                                                settle_s=30.0)

    def mean(seen: list[tuple[int, int]], i: int) -> float:
        return sum(s[i] for s in seen) / len(seen)

    assert len(small_seen) >= 80
    assert mean(small_seen, 0) <= 12, small_seen  # waiting: near the target of 4, not ~224
    assert mean(small_seen, 1) >= 0.9 * 32, small_seen  # still full
    assert mean(big_seen, 1) >= 0.9 * 256, big_seen
    assert small_limit.value < 64 and big_limit.value == 256


def test_without_the_adaptive_cut_the_small_replica_queues_what_it_cannot_run() -> None:
    """The same load with the limit held at its maximum (a replica reporting no queue metric): the
    comparison that shows what the controller is for."""
    small = replace(P20, max_num_seqs=32)
    engine = BatchEngine(small)
    for i in range(256):  # a fixed limit of 256 fills it
        engine.submit(SimRequest(prompt_tokens=520, output_tokens=300, prefix_key=1, prefix_tokens=460,
                                 prompt_key=i), 0.0)
    assert engine.running == 32 and engine.waiting == 224
