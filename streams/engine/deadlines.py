"""Deadline decisions (``actions.provisional.deadline_s``): an event whose model answer has not come
``deadline_s`` after its record's timestamp gets a decision with ``actions.provisional.on_deadline``
(fail open or closed) at once; its final decision still follows.

The reasoning consumer keeps a heap of the events it holds by deadline and serves it between polls.
An event consumed after its deadline has passed (the consumer lagged) gets its deadline decision as
soon as it is consumed: lanes (docs/interventions.md) keep the events that matter out of a backlog.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable

from streams.engine.work import OutRecord, Work
from streams.errors import RetryableError

log = logging.getLogger(__name__)

RETRY_S = 1.0  # a deadline decision that could not be encoded (the registry down) is tried again this much later


class Deadlines:
    def __init__(self, deadline_s: float, *, view: Callable[[Work], object | None],
                 build: Callable[[Work], list[OutRecord]], send: Callable[[Work, OutRecord], None],
                 holds: Callable[[Work], bool]) -> None:
        """``view``: the event's provisional view, taken while its requests are still on it (None:
        nothing pending, no deadline); ``build``: its deadline decision's records; ``send``: produce it under
        the delivery guarantee; ``holds``: the event is still this consumer's (not revoked, not
        rewound)."""
        self.deadline_s = deadline_s
        self._view, self._build, self._send, self._holds = view, build, send, holds
        self._heap: list[tuple[float, int, Work]] = []
        self._seq = itertools.count()
        self.sent = 0

    def __len__(self) -> int:
        return len(self._heap)

    def track(self, work: Work, now: float | None = None) -> None:
        """Watch an event just through the stages (its deadline counts from its record's timestamp,
        or from now when the record has none)."""
        if work.failure is not None or work.event is None or work.deadline is not None:
            return  # poison (no decision), or tracked already (a stage run again after an outage)
        if self._view(work) is None:
            return  # nothing waits for the model
        start = work.timestamp if work.timestamp is not None else (now if now is not None else time.time())
        work.deadline = start + self.deadline_s
        heapq.heappush(self._heap, (work.deadline, next(self._seq), work))

    def tick(self, now: float) -> None:
        """Send the deadline decisions due by ``now`` (wall clock) for events still waiting for the model."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, work = heapq.heappop(heap)
            if work.records or work.deadline_sent or not self._holds(work):
                continue  # decided (its final is on its way), or no longer ours: consumed again elsewhere
            try:
                records = self._build(work)
            except RetryableError as exc:
                log.warning("deadline decision delayed topic=%s partition=%d offset=%d: %s", work.tp[0], work.tp[1],
                            work.offset, exc)
                heapq.heappush(heap, (now + RETRY_S, next(self._seq), work))
                return
            except Exception:  # noqa: BLE001 - the final decision still follows; one event's bug must not stop the rest
                log.exception("cannot build a deadline decision topic=%s partition=%d offset=%d", work.tp[0],
                              work.tp[1], work.offset)
                continue
            work.deadline_sent = True
            for record in records:
                self._send(work, record)
            self.sent += bool(records)
