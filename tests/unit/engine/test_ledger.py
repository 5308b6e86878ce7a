"""The Ledger: one index of unsettled events per partition, and its contiguous low watermark."""

from __future__ import annotations

import random

import pytest

from streams.engine.delivery import Ledger
from streams.engine.work import Work


def work(offset: int, partition: int = 0, topic: str = "in") -> Work:
    return Work((topic, partition), offset, None, None, 0.0)


def test_watermark_waits_for_the_gap() -> None:
    ledger = Ledger()
    w10, w11, w12, w13 = (work(o) for o in (10, 11, 12, 13))
    for w in (w10, w11, w12, w13):
        ledger.add(w)
    assert ledger.settle(w12) and ledger.settle(w11)
    assert ledger.positions() == {}  # 10 still running: nothing may be committed
    assert ledger.oldest(("in", 0)) is w10
    assert ledger.settle(w10)
    assert ledger.positions() == {("in", 0): 13}  # 10, 11, 12 done; 13 pending
    assert ledger.take_commits() == {("in", 0): 13}
    assert ledger.take_commits() == {}  # unchanged: no second commit
    assert ledger.settle(w13)
    assert ledger.take_commits() == {("in", 0): 14}
    assert ledger.count == 0 and ledger.oldest(("in", 0)) is None


def test_non_contiguous_offsets_from_compaction_or_markers() -> None:
    ledger = Ledger()
    w3, w7, w20 = work(3), work(7), work(20)
    for w in (w3, w7, w20):
        ledger.add(w)
    ledger.settle(w3)
    ledger.settle(w7)
    assert ledger.positions() == {("in", 0): 8}


def test_out_of_order_add_rejected() -> None:
    ledger = Ledger()
    ledger.add(work(5))
    with pytest.raises(ValueError):
        ledger.add(work(5))


def test_random_completion_order_never_commits_past_unfinished() -> None:
    rng = random.Random(7)
    ledger = Ledger()
    works = [work(o) for o in range(1000)]
    for w in works:
        ledger.add(w)
    order = works[:]
    rng.shuffle(order)
    done: set[int] = set()
    for w in order:
        assert ledger.settle(w)
        done.add(w.offset)
        pos = ledger.positions().get(("in", 0))
        if pos is not None:
            assert all(x in done for x in range(pos))  # everything below the position is done
            assert pos == len(done) or pos not in done  # and the position is the first gap
    assert ledger.take_commits() == {("in", 0): 1000}
    assert ledger.in_flight(("in", 0)) == 0 and ledger.count == 0


def test_partitions_are_independent_and_dropped() -> None:
    ledger = Ledger()
    a0, a1 = work(0, 0, "a"), work(0, 1, "a")
    ledger.add(a0)
    ledger.add(a1)
    ledger.settle(a1)
    assert ledger.take_commits() == {("a", 1): 1}
    assert ledger.drop([("a", 0)]) == 1
    assert ledger.settle(a0) is False  # late completion of a revoked partition is ignored
    assert ledger.count == 0 and not ledger.holds(a0)


def test_settling_twice_counts_once_and_a_replaced_work_is_not_held() -> None:
    seen: list[Work] = []
    ledger = Ledger(on_settled=seen.append)
    first, second = work(0), work(1)
    ledger.add(first)
    ledger.add(second)
    assert ledger.settle(second) and not ledger.settle(second)
    assert ledger.count == 1 and seen == [second] and ledger.in_flight(("in", 0)) == 1
    ledger.drop([("in", 0)])
    again = work(0)  # consumed again after a rewind: the old record is not this one
    ledger.add(again)
    assert not ledger.holds(first) and ledger.holds(again)
