"""When the policies topic counts as read to its end (the consumer's position against the high
watermark, not the offset of the last record)."""

from __future__ import annotations

from confluent_kafka import OFFSET_INVALID

from streams.policy.topic import CatchUp


def test_a_log_ending_in_a_transaction_marker_is_read_when_the_position_reaches_the_watermark() -> None:
    c = CatchUp({0: (0, 3)}, now=0.0)  # two records at 0 and 1, the commit marker at 2
    c.update({0: 2}, now=0.1)
    assert not c.done
    c.update({0: 3}, now=0.2)
    assert c.done and c.short == []


def test_empty_partitions_are_read_at_once_even_with_a_watermark_above_zero() -> None:
    c = CatchUp({0: (0, 0), 1: (7, 7)}, now=0.0)  # never written; everything deleted or compacted
    assert c.done


def test_a_compacted_tail_is_read_once_the_position_stops_short_of_the_watermark() -> None:
    c = CatchUp({0: (0, 10)}, now=0.0, stall_s=3.0)  # the tail (a tombstone at 9) was cleaned
    c.update({0: 8}, now=0.5)
    c.update({0: 8}, now=2.0)
    assert not c.done
    c.update({0: 8}, now=3.6)
    assert c.done and c.short == [(0, 8, 10)]


def test_a_partition_that_has_read_nothing_is_never_taken_as_read() -> None:
    c = CatchUp({0: (0, 5), 1: (0, 2)}, now=0.0, stall_s=1.0)  # the broker is slow or down
    for t in range(1, 30):
        c.update({0: OFFSET_INVALID, 1: 2}, now=float(t))
    assert not c.done and c.behind == [0]
