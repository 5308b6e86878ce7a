"""When the consumer stops and restarts fetching (decisions only; the pipeline applies them)."""

from __future__ import annotations

from streams.engine.backpressure import (
    HOLD_MAX_S,
    LOCAL_QUEUE_COVER_S,
    MIN_LOCAL_QUEUE,
    Backpressure,
    RateMeter,
    local_queue_allowance,
)


def bp(allowance: float = 10_000.0) -> Backpressure:
    b = Backpressure(max_inflight_events=512, max_poll_records=500)
    b.allowance = allowance
    return b


def test_poll_size_never_overshoots_the_in_flight_bound() -> None:
    b = bp()  # the local queue allowance out of the way
    assert b.poll_size(0, 0, 0) == 500
    assert b.poll_size(100, 0, 0) == 412  # only the room left
    assert b.poll_size(511, 0, 0) == 1
    assert b.poll_size(512, 0, 0) == 1  # paused at the limit, still polling to stay in the group
    assert b.poll_size(600, 0, 0) == 1
    assert bp(32.0).poll_size(600, waiting=500, free_slots=0) == 1  # the memory pause wins over a hold


def test_poll_size_fills_free_slots_and_the_local_queue_allowance_and_no_more() -> None:
    b = bp(105.0)
    assert b.poll_size(300, waiting=0, free_slots=0) == 105
    assert b.poll_size(300, waiting=60, free_slots=0) == 45
    assert b.poll_size(300, waiting=105, free_slots=0) == 0  # no room: hold, do not poll
    assert b.poll_size(300, waiting=80, free_slots=0) == 0  # under a quarter of the allowance: hold too
    assert b.poll_size(300, waiting=78, free_slots=0) == 27
    assert b.poll_size(300, waiting=200, free_slots=0) == 0
    assert b.poll_size(0, waiting=0, free_slots=288) == 393  # a fresh consumer fills its replica at once
    assert b.poll_size(500, waiting=0, free_slots=0) == 12  # the memory bound is the tighter one


def test_rate_meter_measures_whole_windows_and_sees_a_rise_at_once() -> None:
    meter = RateMeter(window_s=1.0)
    assert meter.rate(100.0) == 0.0  # opens the first window
    meter.total += 30
    assert meter.rate(100.2) == 0.0  # the open window is too young to say anything
    assert meter.rate(100.5) == 60.0  # rising: the open window's 30 in 0.5 s
    assert meter.rate(102.0) == 15.0  # the window closes: 30 events in 2 s
    meter.total += 5
    assert meter.rate(102.5) == 15.0  # falling: the last full window holds until this one closes
    assert meter.rate(103.0) == 5.0


def test_local_queue_allowance_covers_half_a_second_of_completions() -> None:
    assert local_queue_allowance(0.0) == MIN_LOCAL_QUEUE  # nothing measured yet
    assert local_queue_allowance(210.0) == 210.0 * LOCAL_QUEUE_COVER_S == 105.0
    assert local_queue_allowance(10.0) == MIN_LOCAL_QUEUE


def test_reasons_to_pause() -> None:
    b = bp(105.0)
    assert b.reason_to_pause(100, waiting=10, healthy=True, held_s=0.0) is None
    assert b.reason_to_pause(512, waiting=0, healthy=True, held_s=0.0) == "max_inflight_events"
    assert b.reason_to_pause(0, waiting=0, healthy=False, held_s=0.0) == "no healthy replica"
    # A full local queue holds polling; only a hold that lasts (replicas not answering) pauses.
    assert b.reason_to_pause(300, waiting=105, healthy=True, held_s=0.5) is None
    assert b.reason_to_pause(300, waiting=105, healthy=True, held_s=HOLD_MAX_S) == "replicas not answering"
    # Held with the queue only nearly full (no room for a worthwhile poll): polling must resume too.
    assert b.reason_to_pause(300, waiting=85, healthy=True, held_s=HOLD_MAX_S) == "replicas not answering"


def test_resume_needs_both_bounds_well_below_and_a_healthy_replica() -> None:
    b = bp(105.0)
    assert b.may_resume(383, waiting=52, healthy=True)
    assert not b.may_resume(384, waiting=0, healthy=True)  # 75% of 512
    assert not b.may_resume(0, waiting=53, healthy=True)  # half the allowance
    assert not b.may_resume(0, waiting=0, healthy=False)


def test_allowance_follows_the_decision_rate() -> None:
    b = Backpressure(max_inflight_events=4096, max_poll_records=500)
    assert b.allowance == MIN_LOCAL_QUEUE
    b.update(10.0, decided=1000)
    b.update(12.0, decided=1420)  # 210 answers (or cache hits) a second
    assert b.allowance == 105.0
