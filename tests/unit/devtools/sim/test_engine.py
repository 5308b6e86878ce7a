from __future__ import annotations

from dataclasses import replace

import pytest

from streams.devtools.sim.engine import BLOCK, BatchEngine, SimRequest
from streams.ops.profiles import PROFILES

P20 = PROFILES["gpt-oss-safeguard-20b@h100"]


def req(out: int, prompt: int = 100, prefix: int = 1, prefix_tokens: int = 80, key: int | None = None) -> SimRequest:
    return SimRequest(prompt_tokens=prompt, output_tokens=out, prefix_key=prefix, prefix_tokens=prefix_tokens,
                      prompt_key=key if key is not None else id(object()))


def run_until_idle(engine: BatchEngine, start: float = 0.0) -> float:
    t = start
    while (dt := engine.next_event_in()) is not None:
        t += dt
        engine.advance(t)
    return t


def test_single_request_latency_is_prefill_plus_decode() -> None:
    e = BatchEngine(P20)
    r = req(out=240, prompt=600)
    e.submit(r, 0.0)
    end = run_until_idle(e)
    expected = 600 / P20.prefill_tokens_per_s + 240 * P20.step_time(1)
    assert r.finished == pytest.approx(expected, rel=1e-6)
    assert end == pytest.approx(expected, rel=1e-6)


def test_profiles_hit_their_calibration_points() -> None:
    assert P20.saturated_output_tps() == pytest.approx(9_000, rel=0.01)
    assert 1 / P20.step_time(1) == pytest.approx(300, rel=0.01)
    p120 = PROFILES["gpt-oss-safeguard-120b@h100"]
    assert p120.saturated_output_tps() == pytest.approx(2_950, rel=0.01)
    assert 1 / p120.step_time(1) == pytest.approx(150, rel=0.01)


def test_moe_step_shape_predicts_the_published_tpot_series() -> None:
    """Fitted on TPOT(64)/TPOT(256) only; the series' other two points are predictions."""
    p120 = PROFILES["gpt-oss-safeguard-120b@h100"]
    published = {64: 31.0, 96: 37.0, 128: 41.0, 256: 58.0}  # ms, InferenceX MI300X gpt-oss-120b
    for n, tpot in published.items():
        assert p120.step_time(n) / p120.step_time(256) == pytest.approx(tpot / 58.0, rel=0.03)
    for p in (P20, p120):
        assert all(p.step_time(n) < p.step_time(n + 1) for n in range(1, 300))


def test_batch_saturates_throughput() -> None:
    e = BatchEngine(P20)
    n = P20.max_num_seqs
    for _ in range(n):
        e.submit(req(out=500, key=None), 0.0)
    end = run_until_idle(e)
    tokens = n * 500
    # Prefill of the uncached suffixes is small next to decoding 500 tokens each.
    assert tokens / end == pytest.approx(P20.saturated_output_tps(), rel=0.05)


def test_queue_beyond_max_num_seqs_waits() -> None:
    small = replace(P20, max_num_seqs=4)
    e = BatchEngine(small)
    reqs = [req(out=100) for _ in range(6)]
    for r in reqs:
        e.submit(r, 0.0)
    assert e.running == 4 and e.waiting == 2
    run_until_idle(e)
    assert all(r.finished is not None for r in reqs)
    # The queued two start only when the first ones finish.
    assert min(r.admitted for r in reqs[4:]) >= min(r.finished for r in reqs[:4]) - 1e-9  # type: ignore[operator]


def test_no_batch_barrier_short_requests_leave_early() -> None:
    e = BatchEngine(P20)
    short, long_ = req(out=50), req(out=2000)
    e.submit(long_, 0.0)
    e.submit(short, 0.0)
    run_until_idle(e)
    assert short.finished is not None and long_.finished is not None
    assert short.finished < long_.finished / 10


def test_prefix_cache_hits_shared_policy_prefix() -> None:
    e = BatchEngine(P20)
    e.submit(req(out=10, prompt=700, prefix=42, prefix_tokens=600, key=1), 0.0)
    e.submit(req(out=10, prompt=720, prefix=42, prefix_tokens=600, key=2), 0.0)
    assert e.prefix_queries_total == 1420
    assert e.prefix_hits_total == (600 // BLOCK) * BLOCK
    e.submit(req(out=10, prompt=720, prefix=42, prefix_tokens=600, key=2), 0.0)  # identical prompt
    assert e.prefix_hits_total == (600 // BLOCK) * BLOCK + (719 // BLOCK) * BLOCK


def test_kv_capacity_limits_admission() -> None:
    tiny = replace(P20, kv_capacity_tokens=3_000)
    e = BatchEngine(tiny, answer_headroom=100)
    for _ in range(5):
        e.submit(req(out=100, prompt=1000), 0.0)
    assert e.running == 2 and e.waiting == 3
    assert 0 < e.kv_usage() <= 1


def test_abort_frees_the_slot() -> None:
    small = replace(P20, max_num_seqs=1)
    e = BatchEngine(small)
    a, b = req(out=1000), req(out=10)
    e.submit(a, 0.0)
    e.submit(b, 0.0)
    assert e.waiting == 1
    e.abort(a)
    assert e.running == 1 and e.waiting == 0
    run_until_idle(e)
    assert b.finished is not None and a.finished is None


@pytest.mark.parametrize("seqs", [1, 3, 4, 7, 256])
def test_drives_to_idle_whatever_the_float_residue(seqs: int) -> None:
    """Driving the engine by next_event_in always terminates (a 1e-17 stall left over by float
    arithmetic once made it return the same tiny delay forever)."""
    e = BatchEngine(replace(P20, max_num_seqs=seqs))
    reqs = [req(out=37 + 11 * i, prompt=100 + 7 * i) for i in range(20)]
    for r in reqs:
        e.submit(r, 0.0)
    steps = 0
    t = 0.0
    while (dt := e.next_event_in()) is not None:
        t += dt
        e.advance(t)
        steps += 1
        assert steps < 1000
    assert all(r.finished is not None for r in reqs)


def _full_engine(policy: str) -> tuple[BatchEngine, list[SimRequest]]:
    """An engine whose running slots are all taken, then three waiting requests: priorities 5, 0, -1."""
    small = replace(P20, max_num_seqs=2)
    e = BatchEngine(small, scheduling_policy=policy)
    for _ in range(2):
        e.submit(req(out=100), 0.0)
    waiting = []
    for priority in (5, 0, -1):
        r = req(out=10)
        r.priority = priority
        e.submit(r, 0.0)
        waiting.append(r)
    assert e.running == 2 and e.waiting == 3
    return e, waiting


def test_priority_policy_serves_the_lowest_priority_first_without_preempting_running_ones() -> None:
    e, (p5, p0, p_minus1) = _full_engine("priority")
    run_until_idle(e)
    assert all(r.admitted is not None for r in (p5, p0, p_minus1))
    assert p_minus1.admitted <= p0.admitted <= p5.admitted  # type: ignore[operator]
    assert p_minus1.admitted > 0  # it waited for a running request to finish: no preemption


def test_fcfs_ignores_priority_silently_as_vllm_does() -> None:
    e, (p5, p0, p_minus1) = _full_engine("fcfs")
    run_until_idle(e)
    assert p5.admitted <= p0.admitted <= p_minus1.admitted  # type: ignore[operator]  # arrival order


def test_an_aborted_waiting_request_leaves_the_priority_queue() -> None:
    e, (p5, p0, p_minus1) = _full_engine("priority")
    e.abort(p_minus1)
    assert e.waiting == 2
    run_until_idle(e)
    assert p_minus1.admitted is None and p0.admitted <= p5.admitted  # type: ignore[operator]


def test_an_unknown_scheduling_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="fcfs or priority"):
        BatchEngine(P20, scheduling_policy="lifo")


def test_generated_tokens_count_as_they_are_produced_and_an_abort_keeps_them() -> None:
    """As vLLM counts them (every step), so a scrape mid-generation sees the tokens so far, and a
    request its client abandoned keeps what it generated; the counter never steps back."""
    e = BatchEngine(P20)
    r = req(out=1000, prompt=600)
    e.submit(r, 0.0)
    e.advance(600 / P20.prefill_tokens_per_s + 100.5 * P20.step_time(1))
    during = e.generation_tokens_total
    assert during == 100
    e.abort(r)
    assert 100 <= e.generation_tokens_total <= 101 and e.running == 0
    done = req(out=50)
    e.submit(done, e.t)
    run_until_idle(e, e.t)
    assert e.generation_tokens_total in (150, 151)
