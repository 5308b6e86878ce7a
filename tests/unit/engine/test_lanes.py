"""Lanes between topics: lower lanes held while a higher one has records waiting on the broker,
released when it drains; the flow control never resumes a held partition."""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from streams.engine.backpressure import Backpressure, FlowControl
from streams.engine.lanes import CHECK_EVERY_S, Lanes

LANE = {"live": 0, "reviews": 1, "backfill": 2}


class Consumer:
    """What the lanes read and do: cached high watermarks, positions, pause and resume."""

    def __init__(self) -> None:
        self.high: dict[tuple[str, int], int] = {}
        self.pos: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        assert cached  # never a request to the broker from the poll loop
        return 0, self.high.get((tp.topic, tp.partition), -1001)

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.pos.get((tp.topic, tp.partition), -1001)) for tp in tps]

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in tps}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in ASSIGNED]


ASSIGNED = [("live", 0), ("reviews", 0), ("backfill", 0), ("backfill", 1)]


def step(lanes: Lanes, consumer: Any, now: list[float], flow_paused: bool = False) -> None:
    now[0] += 2 * CHECK_EVERY_S
    lanes.apply(consumer, now[0], ASSIGNED, flow_paused=flow_paused)


def test_lower_lanes_wait_while_a_higher_one_has_records_on_the_broker() -> None:
    c, lanes, now = Consumer(), Lanes(LANE.__getitem__), [0.0]
    for tp in ASSIGNED:
        c.high[tp], c.pos[tp] = 100, 100  # caught up everywhere
    step(lanes, c, now)
    assert c.paused == set() and lanes.held == set()
    c.high[("backfill", 0)] = 10_000  # a backfill: nothing to hold, it is the lowest lane
    step(lanes, c, now)
    assert c.paused == set()
    c.high[("live", 0)] = 105  # live records waiting: every lower lane is held
    step(lanes, c, now)
    assert c.paused == {("reviews", 0), ("backfill", 0), ("backfill", 1)} == lanes.held
    c.pos[("live", 0)] = 105  # fetched: released at once
    step(lanes, c, now)
    assert c.paused == set() and lanes.held == set()
    c.high[("reviews", 0)] = 120  # reviews waiting: only the backfill is held
    step(lanes, c, now)
    assert c.paused == {("backfill", 0), ("backfill", 1)}


def test_the_flow_control_never_resumes_a_held_partition_and_lanes_wait_for_it() -> None:
    c, lanes, now = Consumer(), Lanes(LANE.__getitem__), [0.0]
    flow = FlowControl(Backpressure(max_inflight_events=10, max_poll_records=5))
    flow.held = lanes.held
    for tp in ASSIGNED:
        c.high[tp], c.pos[tp] = 100, 100
    c.high[("live", 0)] = 200
    step(lanes, c, now)
    held = set(lanes.held)
    flow.apply(c, 1.0, inflight_events=10, waiting=0, healthy=True, decided=0)  # memory bound: all paused
    assert flow.paused and c.paused == set(ASSIGNED)
    c.pos[("live", 0)] = 200  # live drained while everything was paused by the flow control
    step(lanes, c, now, flow_paused=True)
    assert lanes.held == set() and c.paused == set(ASSIGNED)  # released, but the flow control resumes
    c.high[("live", 0)] = 300
    step(lanes, c, now, flow_paused=True)
    flow.apply(c, 2.0, inflight_events=0, waiting=0, healthy=True, decided=0)
    assert not flow.paused and c.paused == held  # resumed, minus what the lanes hold
    flow.assigned(c, [TopicPartition("backfill", 1), TopicPartition("live", 0)])  # a partition coming back
    assert ("backfill", 1) in c.paused and ("live", 0) not in c.paused


def test_lanes_are_needed_only_across_more_than_one_lane() -> None:
    assert Lanes.needed(["live", "backfill"], LANE.__getitem__)
    assert not Lanes.needed(["backfill"], LANE.__getitem__)
