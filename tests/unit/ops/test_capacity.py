"""The capacity model against the engine it solves: the simulator's batch engine, run to a steady
state with the same request shapes, must give the throughput the formula predicts."""

from __future__ import annotations

import math
import random

import pytest

from streams.devtools.sim.engine import BatchEngine, SimRequest
from streams.ops.capacity import (
    Workload,
    from_bench,
    model_requests_per_s,
    plan,
    predict_run,
    replica_rate,
)
from streams.ops.profiles import HARMONY_OVERHEAD_TOKENS, PROFILES


def engine_throughput(w: Workload, *, concurrency: int, n: int = 6000, seed: int = 3) -> tuple[float, float]:
    """(requests per GPU-second, mean running) of the batch engine kept ``concurrency`` requests busy,
    over the middle of ``n`` completions; reasoning lengths drawn like the simulator's server."""
    p = PROFILES[w.profile]
    rng = random.Random(seed)
    prefix = HARMONY_OVERHEAD_TOKENS + int(w.policy_tokens)
    prompt = prefix + int(w.content_tokens)

    def request(k: int) -> SimRequest:
        draw = p.reasoning_median[w.effort] * math.exp(p.reasoning_sigma * rng.gauss(0, 1))
        reasoning = max(8, min(32_768, int(draw)))
        return SimRequest(prompt_tokens=prompt, output_tokens=reasoning + int(w.final_tokens), prefix_key=1,
                          prefix_tokens=prefix, prompt_key=10 + k)

    engine = BatchEngine(p)
    sent = 0
    for _ in range(concurrency):
        engine.submit(request(sent), 0.0)
        sent += 1
    t, done, running = 0.0, [], []
    while len(done) < n:
        dt = engine.next_event_in()
        assert dt is not None
        t += dt
        finished = engine.advance(t)
        done.extend(r.finished for r in finished if r.finished is not None)
        running.append(engine.running)
        for _ in finished:
            engine.submit(request(sent), t)
            sent += 1
    lo, hi = n // 5, n - n // 5
    return (hi - lo) / (done[hi] - done[lo]), sum(running[len(running) // 5:]) / len(running[len(running) // 5:])


@pytest.mark.parametrize("profile", ["gpt-oss-safeguard-20b@h100", "gpt-oss-safeguard-120b@h100"])
def test_saturated_rate_matches_the_engine(profile: str) -> None:
    w = Workload(events_per_s=1, profile=profile, content_tokens=60, policy_tokens=740)
    predicted = replica_rate(w)
    measured, running = engine_throughput(w, concurrency=PROFILES[profile].max_num_seqs + 32)
    assert measured == pytest.approx(predicted.requests_per_s, rel=0.05)
    assert running == pytest.approx(predicted.running, rel=0.08)
    # The 120b's KV cache binds before its 256 slots on these prompts; the 20b's does not.
    assert predicted.limited_by == ("kv_cache" if "120b" in profile else "max_num_seqs")


def test_under_offered_concurrency_follows_the_step_curve() -> None:
    w = Workload(events_per_s=1, content_tokens=60, policy_tokens=740)
    for concurrency in (32, 128):
        predicted = replica_rate(w, concurrency=concurrency)
        measured, _ = engine_throughput(w, concurrency=concurrency, n=3000)
        assert predicted.limited_by == "offered_concurrency"
        assert measured == pytest.approx(predicted.requests_per_s, rel=0.05)
    # Fewer running sequences: less throughput, but more than proportionally less step time.
    half = replica_rate(w, concurrency=128).requests_per_s / replica_rate(w).requests_per_s
    assert 0.5 < half < 0.9


def test_effort_costs_reasoning_tokens() -> None:
    low, high = (replica_rate(Workload(events_per_s=1, effort=e)).requests_per_s for e in ("low", "high"))
    assert 4 < low / high < 6.5
    # A measured mean replaces the profile's assumption, and the engine agrees with the formula for it.
    measured_mean = Workload(events_per_s=1, reasoning_tokens=150, content_tokens=60, policy_tokens=740)
    faster = replica_rate(measured_mean)
    assert faster.shape.output_tokens == pytest.approx(150 + 50)
    assert faster.requests_per_s > replica_rate(Workload(events_per_s=1)).requests_per_s


def test_requests_by_mode_prefilter_and_cache() -> None:
    assert model_requests_per_s(Workload(events_per_s=100, policies=3)) == pytest.approx(300)
    assert model_requests_per_s(Workload(events_per_s=100, policies=3, prefilter_pass=0.2,
                                         cache_hit=0.5)) == pytest.approx(30)
    combined = Workload(events_per_s=100, policies=3, prefilter_pass=0.2, mode="combined")
    assert model_requests_per_s(combined) == pytest.approx(100 * (1 - 0.8**3))
    # A combined request carries the policies that passed: longer than one policy's, shorter than three.
    one = replica_rate(Workload(events_per_s=1)).shape.output_tokens
    assert one < replica_rate(combined).shape.output_tokens < 3 * one


def test_plan_sizes_gpus_pods_and_partitions() -> None:
    w = Workload(events_per_s=10_000)
    out = plan(w)
    per_gpu = replica_rate(w).requests_per_s
    assert out["per_gpu_requests_per_s"] == round(per_gpu, 2)
    assert out["gpus"] == math.ceil(10_000 / (per_gpu * w.target_utilisation))
    assert out["consumer_pods"] == max(out["consumer_pods_by"].values())
    assert out["partitions"] >= out["consumer_pods"]
    assert set(out) >= {"events_per_s", "model_requests_per_s", "gpus", "consumer_pods", "partitions", "inputs",
                        "assumptions"}
    cascade = plan(Workload(events_per_s=10_000, prefilter_pass=0.2155))
    assert cascade["gpus"] == math.ceil(out["gpus"] * 0.2155)
    assert cascade["consumer_cpu_cores"] < out["consumer_cpu_cores"]


def test_scale_prediction_takes_the_binding_term() -> None:
    w = Workload(events_per_s=1)
    one = predict_run(w, consumers=1, replicas=1, partitions=6, inflight_per_consumer=288, time_scale=1)
    assert predict_run(w, consumers=2, replicas=2, partitions=6, inflight_per_consumer=288,
                       time_scale=1) == pytest.approx(2 * one)
    assert predict_run(w, consumers=2, replicas=1, partitions=6, inflight_per_consumer=288,
                       time_scale=1) == pytest.approx(one)  # replicas bind
    spread = predict_run(w, consumers=1, replicas=2, partitions=6, inflight_per_consumer=288, time_scale=1)
    assert one < spread < 2 * one  # one consumer's in-flight over two replicas
    assert predict_run(w, consumers=4, replicas=4, partitions=2, inflight_per_consumer=288,
                       time_scale=1) == pytest.approx(2 * spread)  # only two consumers get partitions


@pytest.mark.parametrize("bad", [dict(events_per_s=0), dict(events_per_s=1, prefilter_pass=0),
                                 dict(events_per_s=1, cache_hit=1), dict(events_per_s=1, effort="extreme"),
                                 dict(events_per_s=1, profile="h200"), dict(events_per_s=1, mode="both")])
def test_bad_inputs_are_named(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="--"):
        Workload(**bad)  # type: ignore[arg-type]


def test_cpu_inputs_from_a_bench_result() -> None:
    bench = {"pipeline": {"cpu_us_per_event": 300.0}, "cascade": {"cpu_us_per_prefiltered_event": 90.0},
             "passthrough": {"cpu_us_per_event": 40.0}}
    assert from_bench(bench) == {"cpu_us_per_model_label": 300.0, "cpu_us_per_prefilter_label": 90.0,
                                 "cpu_us_per_cache_label": 40.0}
    with pytest.raises(ValueError, match="safeguard bench"):
        from_bench({"runs": []})
