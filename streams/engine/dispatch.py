"""The inference stage: one asyncio task per open request, outcomes back onto the event.

Tasks run concurrently over the replica pool (many in flight per replica); the poll loop never
waits for them. When the last request of an event is decided, ``finished(work)`` hands the event
to outputs and delivery. Whatever a request raises becomes an ``internal_error`` outcome for its
policies (a bug met by one event must not stall its partition); a task whose event was dropped
meanwhile (partition revoked, transaction rewound) is cancelled, and its late result ignored: the
event will be consumed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from streams.engine.work import Request, Work
from streams.errors import ErrorType, PoisonError
from streams.inference.labeler import Labeler, Outcome
from streams.inference.replicas.pool import Lane

log = logging.getLogger(__name__)


class Dispatch:
    """Starts an event's requests and reports the event once all are decided."""

    def __init__(self, labeler: Labeler | None, holds: Callable[[Work], bool], finished: Callable[[Work], None],
                 lane_wait: Callable[[str], Any] | None = None) -> None:
        """``labeler`` None: a consumer with no model behind it, whose stages leave no request open.
        ``lane_wait``: the histogram (by priority) of record time to the event's first request sent."""
        self._labeler = labeler
        self._holds = holds
        self._finished = finished
        self._lane_wait = lane_wait

    def start(self, work: Work) -> None:
        requests, work.requests = work.requests, []
        work.pending += len(requests)
        priority, since = work.lane
        lane = Lane(priority, since, self._first_sent(work))
        for request in requests:
            task = asyncio.create_task(self._run(work, request, lane))
            work.tasks.add(task)
            task.add_done_callback(work.tasks.discard)

    def _first_sent(self, work: Work) -> Callable[[], None] | None:
        """Observes the event's lane wait when its first request gets a replica slot."""
        if self._lane_wait is None or work.timestamp is None:
            return None
        histogram, timestamp = self._lane_wait(str(work.priority)), work.timestamp
        observed: list[bool] = []

        def sent() -> None:
            if not observed:
                observed.append(True)
                histogram.observe(max(0.0, time.time() - timestamp))
        return sent

    async def _run(self, work: Work, request: Request, lane: Lane) -> None:
        assert self._labeler is not None, "a request reached inference in a consumer with no model"
        try:
            outcomes = await self._labeler.label(request.policies, work.content, request.cache_key, lane)
        except Exception as exc:  # noqa: BLE001 - see the module doc
            log.exception("internal error labelling topic=%s partition=%d offset=%d", work.tp[0], work.tp[1],
                          work.offset)
            failure = PoisonError(ErrorType.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            outcomes = [Outcome(p, failure=failure) for p in request.policies]
        if not self._holds(work):
            return  # dropped meanwhile: the event will be consumed again
        work.outcomes.extend(outcomes)
        work.pending -= 1
        if work.pending == 0:
            self._finished(work)
