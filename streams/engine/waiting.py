"""Events waiting out an outage of a dependency other than the replicas (the Schema Registry).

A stage that cannot decode an event, or outputs that cannot be encoded, because the registry is
unreachable must neither dead-letter valid input nor lose it: the event waits here, still in flight
(its offset is not committed), and the consumer pauses its partitions with the outage named in a
warning and in ``/readyz``, as for a replica outage. Once per ``retry_s`` the oldest waiting event
is tried again (one blocking registry call at most, not one per event); when it goes through, all
the others follow. A restart or a rebalance loses nothing: waiting events were never committed.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

from streams.engine.work import TopicPartitionKey, Work

log = logging.getLogger(__name__)

Step = Literal["stages", "outputs"]  # where the event goes back in when it is tried again


@dataclass(eq=False, slots=True)
class Waiter:
    work: Work
    step: Step


class Waiting:
    """The waiting events, in arrival order, and the outage that holds them."""

    def __init__(self, retry_s: float = 1.0) -> None:
        self._queue: deque[Waiter] = deque()
        self._retry_s = retry_s
        self._next = 0.0
        self.reason: str | None = None  # the outage, while events wait

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def hold(self, work: Work, step: Step, reason: str, now: float) -> None:
        if self.reason is None:
            log.warning("events wait for an outage to end (partitions paused): %s", reason)
            self._next = now + self._retry_s
        self.reason = reason
        self._queue.append(Waiter(work, step))

    def due(self, now: float) -> Waiter | None:
        """The event to try again now (the caller holds it again if it still fails), or None."""
        if not self._queue or now < self._next:
            return None
        self._next = now + self._retry_s
        return self._queue.popleft()

    def release(self) -> list[Waiter]:
        """The outage is over: every waiting event, oldest first."""
        out = list(self._queue)
        self._queue.clear()
        if self.reason is not None:
            log.info("outage over, %d waiting events go on: %s", len(out), self.reason)
        self.reason = None
        return out

    def drop(self, keys: list[TopicPartitionKey]) -> None:
        """Partitions revoked, lost or rewound: their events are consumed again elsewhere."""
        gone = set(keys)
        self._queue = deque(w for w in self._queue if w.work.tp not in gone)
        if not self._queue:
            self.reason = None
