from __future__ import annotations

from streams.inference.replicas.adaptive import AimdLimit


def test_fixed_maximum_without_queue_metrics() -> None:
    a = AimdLimit(maximum=256)
    for _ in range(1000):
        a.on_success(inflight=255)
    assert a.value == 256


def test_starts_full_and_slow_starts_after_a_cut() -> None:
    assert AimdLimit(maximum=256).value == 256
    a = AimdLimit(maximum=256, initial=32)
    a.observe_queue(0, now=0.0)
    for _ in range(a.value):  # one round trip at the limit with an empty replica queue doubles it
        a.on_success(inflight=a.value - 1)
    assert a.value == 64


def test_grows_about_one_per_round_trip_after_a_cut() -> None:
    a = AimdLimit(maximum=256, initial=40, waiting_target=4)
    a.observe_queue(10, now=0.0)  # congestion: cut to 32, leave slow start
    assert a.value == 32
    a.observe_queue(0, now=5.0)
    for _ in range(10):  # ten round trips at the limit
        for _ in range(a.value):
            a.on_success(inflight=a.value - 1)
    assert 40 <= a.value <= 44


def test_does_not_grow_when_load_is_below_the_limit() -> None:
    a = AimdLimit(maximum=256, initial=32)
    a.observe_queue(0, now=0.0)
    for _ in range(500):
        a.on_success(inflight=3)
    assert a.value == 32


def test_backs_off_when_the_replica_queue_builds_then_converges() -> None:
    a = AimdLimit(maximum=512, initial=300, waiting_target=4)
    # A replica with 256 slots: anything above 256 in flight waits in its queue.
    now = 0.0
    for _ in range(200):
        now += 0.5
        a.observe_queue(max(0, a.value - 256), now)
        for _ in range(a.value):
            a.on_success(inflight=a.value - 1)
    assert 200 <= a.value <= 270  # close to the replica's real capacity, not the 512 ceiling
    assert a.minimum <= a.value <= a.maximum


def test_cut_is_sized_by_the_replicas_running_count() -> None:
    # 256 allowed, the replica runs 32 and queues the rest: one cut lands near 32 + target...
    a = AimdLimit(maximum=256, waiting_target=4, max_cut=0.1)
    a.observe_queue(224, now=0.0, running=32)
    assert a.value == 36
    # ...a small excess gets a small cut, not the fixed 20%...
    b = AimdLimit(maximum=256, waiting_target=4)
    b.observe_queue(8, now=0.0, running=248)
    assert b.value == 252
    # ...right after a cut our older requests still queue there: that is no reason to cut again...
    a.observe_queue(28, now=1.5, running=32, inflight=60)
    assert a.value == 36
    # ...and one scrape of a replica with nothing running yet cannot collapse the limit.
    c = AimdLimit(maximum=256)
    c.observe_queue(200, now=0.0, running=0)
    assert c.value == 128


def test_consumers_sharing_a_replica_land_on_its_capacity_together() -> None:
    # Three consumers with different limits share one 128-slot replica; each sees the same queue.
    limits = [AimdLimit(maximum=256, initial=n, waiting_target=4) for n in (100, 60, 40)]
    for a in limits:
        a.observe_queue(0, now=-5.0, running=0)  # the replica reports a queue: the limits apply
    demand = sum(a.value for a in limits)
    for a in limits:
        a.observe_queue(demand - 128, now=0.0, running=128)
    assert abs(sum(a.value for a in limits) - (128 + 4)) <= 3
    assert limits[0].value > limits[1].value > limits[2].value  # shares kept; additive increase evens them


def test_an_idle_consumer_keeps_its_limit_while_others_queue_the_replica() -> None:
    a = AimdLimit(maximum=256, waiting_target=4)
    for t in range(30):
        a.observe_queue(500, now=float(t), running=256, inflight=0)
    assert a.value == 256
    a.observe_queue(500, now=31.0, running=256, inflight=256)  # now ours are there too: cut
    assert a.value == 128


def test_comes_back_fast_once_the_replica_reports_room_again() -> None:
    # Cut to the minimum while another client flooded the replica; then its queue empties.
    a = AimdLimit(maximum=256, waiting_target=4)
    now = 0.0
    while a.value > a.minimum:
        a.observe_queue(500, now=now, running=256, inflight=a.value)
        now += 1.0
    a.observe_queue(0, now=now, running=10, inflight=a.value)
    for _ in range(a.value):
        a.on_success(inflight=a.value - 1)
    assert a.limit < a.minimum + 1.5  # one empty reading may be a lull: still about one per round trip
    a.observe_queue(0, now=now + 1, running=5, inflight=a.value)
    round_trips = 0
    while a.value < 256:
        for _ in range(a.value):
            a.on_success(inflight=a.value - 1)
        round_trips += 1
    assert round_trips <= 7  # doubling per round trip; one request per round trip would take ~250
    # With a small queue again it is at capacity: back to about one per round trip.
    a.observe_queue(2, now=now + 1, running=256, inflight=a.value)
    a.limit = 200.0
    for _ in range(200):
        a.on_success(inflight=a.value - 1)
    assert abs(a.limit - 201) < 0.01  # one round trip: about one more


def test_queue_target_covers_the_consumers_reaction_time() -> None:
    # 200 completions a second noticed up to 50 ms late: keep 2 x 200 x 0.05 = 20 waiting, not 4.
    a = AimdLimit(maximum=300, waiting_target=4, reaction_s=0.05)
    a.observe_queue(0, now=0.0, running=256, inflight=256)
    for _ in range(200):
        a.on_success(inflight=a.value - 1)
    a.observe_queue(18, now=1.0, running=256, inflight=274)
    assert a.target == 20.0
    assert a.value == 300  # a queue of 18 is within the target: no cut
    a.observe_queue(60, now=2.0, running=256, inflight=316)  # no completions counted this second
    assert a.target == 4.0  # a quiet second: back to the floor...
    assert a.value == 260  # ...and the sized cut aims at 256 running + 4 waiting
    # Without batching (reaction 0) the floor is the target whatever the rate.
    b = AimdLimit(maximum=300, waiting_target=4)
    b.observe_queue(0, now=0.0, running=256, inflight=256)
    for _ in range(500):
        b.on_success(inflight=255)
    b.observe_queue(10, now=1.0, running=256, inflight=266)
    assert b.target == 4.0 and b.value < 266


def test_the_maximum_is_a_ceiling_even_below_the_minimum() -> None:
    a = AimdLimit(maximum=2)  # minimum defaults to 4
    a.observe_queue(30, now=0.0, running=2, inflight=2)
    assert a.value == 2
    a.observe_queue(0, now=5.0, running=2, inflight=2)
    for _ in range(50):
        a.on_success(inflight=a.value - 1)
    assert a.value == 2
