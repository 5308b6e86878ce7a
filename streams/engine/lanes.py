"""Lanes between topics: a partition of a lower-priority route is paused while a partition of a
higher-priority one has lag, and fetched again as soon as that drains.

Kafka cannot reorder a partition, so lanes are topics (``policies.routes[].priority``, lower is
sooner; a topic's lane is the most urgent route that can match its events). Lag here is what the
broker holds that this member has not fetched yet: its cached high watermark minus its position,
both known locally (no request to the broker). Events already fetched wait for a replica slot in
(priority, record time) order instead (:class:`streams.inference.replicas.pool.Lane`), so a steady
trickle on a live topic, fetched as it comes, never starves a backfill: only a live topic with
records waiting on the broker holds the backfill back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import TopicPartition

from streams.engine.work import TopicPartitionKey
from streams.ops.logutil import RateLimitedLog

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.1


class Lanes:
    """The lane holds of one consumer; :attr:`held` is read by the flow control, which never resumes
    a held partition."""

    def __init__(self, topic_lane: Callable[[str], int]) -> None:
        self._topic_lane = topic_lane
        self.held: set[TopicPartitionKey] = set()
        self._checked = 0.0
        self._log = RateLimitedLog(log, 30.0)  # a trickle on a live lane holds and releases all day

    @staticmethod
    def needed(topics: Iterable[str], topic_lane: Callable[[str], int]) -> bool:
        """Lanes matter only when the consumer's topics are in more than one."""
        return len({topic_lane(t) for t in topics}) > 1

    def apply(self, consumer: Any, now: float, assigned: Iterable[TopicPartitionKey], *, flow_paused: bool) -> None:
        """Hold the partitions behind the most urgent lane with lag; release the others (unless the
        flow control has every partition paused: it resumes them, minus :attr:`held`)."""
        if now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        assigned = list(assigned)
        if not assigned:
            self.held.clear()
            return
        lagging = [self._topic_lane(t) for (t, p) in assigned if _lag(consumer, t, p) > 0]
        urgent = min(lagging) if lagging else None
        hold = {tp for tp in assigned if urgent is not None and self._topic_lane(tp[0]) > urgent}
        release, pause = self.held - hold, hold - self.held
        self.held.difference_update(release)  # in place: the flow control reads this very set
        self.held.update(pause)
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in sorted(pause)])
            self._log.log(logging.INFO, "hold", "lanes: holding partitions=%s while lane %d has lag (released as "
                          "soon as it drains)", _fmt(pause), urgent)
        if release and not flow_paused:
            consumer.resume([TopicPartition(t, p) for t, p in sorted(release) if (t, p) in set(assigned)])
            log.debug("lanes: released partitions=%s", _fmt(release))

    def revoked(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.held.difference_update(keys)


def _lag(consumer: Any, topic: str, partition: int) -> int:
    """Records on the broker this member has not fetched (from what it knows locally; unknown: 0)."""
    tp = TopicPartition(topic, partition)
    try:
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        position = consumer.position([tp])[0].offset
    except Exception:  # noqa: BLE001 - a partition mid-revoke: no lag to act on
        return 0
    if high is None or high < 0:
        return 0
    if position is None or position < 0:  # nothing fetched yet: all of it, for all we know
        return high
    return max(0, high - position)


def _fmt(keys: Iterable[TopicPartitionKey]) -> str:
    return ",".join(f"{t}[{p}]" for t, p in sorted(keys))
