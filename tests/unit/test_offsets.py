from __future__ import annotations

import random

import pytest

from streams.offsets import OffsetTracker, PartitionOffsets


def test_watermark_waits_for_the_gap() -> None:
    p = PartitionOffsets()
    for off in (10, 11, 12, 13):
        p.add(off)
    assert not p.complete(12)
    assert not p.complete(11)
    assert p.position is None  # 10 still running: nothing may be committed
    assert p.complete(10)
    assert p.position == 13  # 10, 11, 12 done; 13 pending
    assert p.take_commit() == 13
    assert p.take_commit() is None  # unchanged: no second commit
    assert p.complete(13)
    assert p.take_commit() == 14


def test_non_contiguous_offsets_from_compaction_or_markers() -> None:
    p = PartitionOffsets()
    for off in (3, 7, 20):
        p.add(off)
    p.complete(3)
    p.complete(7)
    assert p.position == 8


def test_out_of_order_add_rejected() -> None:
    p = PartitionOffsets()
    p.add(5)
    with pytest.raises(ValueError):
        p.add(5)


def test_random_completion_order_never_commits_past_unfinished() -> None:
    rng = random.Random(7)
    t = OffsetTracker()
    offsets = list(range(1000))
    for o in offsets:
        t.add("in", 0, o)
    order = offsets[:]
    rng.shuffle(order)
    done: set[int] = set()
    for o in order:
        t.complete("in", 0, o)
        done.add(o)
        pos = t.positions().get(("in", 0))
        if pos is not None:
            assert all(x in done for x in range(pos))  # everything below the position is done
            assert pos == len(done) or pos not in done  # and the position is the first gap
    assert t.take_commits() == {("in", 0): 1000}
    assert t.in_flight() == 0


def test_partitions_are_independent_and_dropped() -> None:
    t = OffsetTracker()
    t.add("a", 0, 0)
    t.add("a", 1, 0)
    t.complete("a", 1, 0)
    assert t.take_commits() == {("a", 1): 1}
    t.drop([("a", 0)])
    assert t.complete("a", 0, 0) is False  # late completion of a revoked partition is ignored
    assert t.in_flight() == 0
