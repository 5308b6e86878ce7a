"""When the consumer stops fetching: the decisions (:class:`Backpressure`, pure) and the pause state
that applies them to the partitions (:class:`FlowControl`).

- **Memory** (``batching.max_inflight_events``, exact): at most that many events consumed and not
  yet settled. Each poll asks only for the room left, so a poll batch cannot overshoot it; at the
  limit the partitions pause, and they resume below ``RESUME_FRACTION`` of it.
- **Latency** (the local queue): requests waiting for a replica slot add latency and no throughput.
  The replicas run what they can (each up to its adaptive limit, plus the short queue that limit
  keeps there); a few more waiting here refill slots as they free, and the rest are better left in
  Kafka, where they count as consumer lag (what the autoscaler scales on), can go to another member
  after a rebalance, and need no relabelling after a crash. The allowance is what the consumer
  decides in ``LOCAL_QUEUE_COVER_S`` (replica answers plus dedupe cache hits per second, measured by
  :class:`RateMeter`, in the unit of the waiting requests whatever the number of policies per
  event; at least ``MIN_LOCAL_QUEUE``). A poll asks for no more than the replicas' free slots plus
  the allowance minus the requests already waiting (so a fresh consumer fills its replicas in one
  poll); with less room than a quarter of the allowance (a poll is a thread hand-off) the consumer
  **holds**: it skips polling for a moment instead of pausing. Pausing would cost more than the
  wait: librdkafka drops the partitions' prefetched records on pause and delivers again only
  0.3-0.6 s after a resume, long enough to drain the local queue and idle the replicas.
  A hold that lasts ``HOLD_MAX_S`` (the replicas have stopped answering) turns into a pause, so
  polling, and with it rebalance callbacks, never stops for long; it ends below half the allowance.
- **Outage**: with no healthy replica, or while events wait for another dependency (the Schema
  Registry, :mod:`streams.engine.waiting`), the partitions pause (a warning naming it), and resume
  by themselves when it is back. The loop keeps calling ``consume`` while paused, so the member stays in the group.

How the constants were chosen, with the measurements: docs/performance.md.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

RESUME_FRACTION = 0.75  # of max_inflight_events
LOCAL_QUEUE_COVER_S = 0.5  # requests waiting locally: about this many seconds of decisions
MIN_LOCAL_QUEUE = 32
HOLD_MAX_S = 1.0  # a hold longer than this (replicas not answering) becomes a pause
POLL_TIMEOUT_S = 0.1  # idle, or paused with no healthy replica: wait this long for new records
BUSY_POLL_TIMEOUT_S = 0.02  # records flowing, or held back by backpressure: come back this often


def local_queue_allowance(decided_per_s: float) -> float:
    """Requests allowed to wait for a replica slot before fetching holds."""
    return max(float(MIN_LOCAL_QUEUE), decided_per_s * LOCAL_QUEUE_COVER_S)


class Backpressure:
    """The two bounds for one consumer; call :meth:`update` before deciding."""

    def __init__(self, max_inflight_events: int, max_poll_records: int) -> None:
        self.max_inflight_events = max_inflight_events
        self.max_poll_records = max_poll_records
        self.decided = RateMeter()
        self.allowance = local_queue_allowance(0.0)

    def update(self, now: float, decided: int) -> None:
        """``decided``: replica answers plus dedupe cache hits so far (a running total)."""
        self.decided.total = decided
        self.allowance = local_queue_allowance(self.decided.rate(now))

    def poll_size(self, inflight_events: int, waiting: int, free_slots: int) -> int:
        """Records to ask for: a full poll batch, but never past ``max_inflight_events`` nor what the
        replicas' free slots and the local queue allowance take. 0: hold (do not poll now); at the
        memory bound 1, since the partitions are paused then and polling keeps the member alive."""
        memory_room = self.max_inflight_events - inflight_events
        if memory_room <= 0:
            return 1
        queue_room = free_slots + int(self.allowance) - waiting
        if queue_room < self.allowance / 4:
            return 0  # a thread hand-off per poll: wait for a quarter of the allowance to free up
        return min(self.max_poll_records, memory_room, queue_room)

    def reason_to_pause(self, inflight_events: int, waiting: int, healthy: bool, held_s: float) -> str | None:
        """Why fetching should pause now (None: no reason). ``held_s``: how long polling has been held."""
        if not healthy:
            return "no healthy replica"
        if inflight_events >= self.max_inflight_events:
            return "max_inflight_events"
        if held_s >= HOLD_MAX_S:  # polling must not stop for long, whatever holds it
            return "replicas not answering"
        return None

    def may_resume(self, inflight_events: int, waiting: int, healthy: bool) -> bool:
        return (healthy and inflight_events < self.max_inflight_events * RESUME_FRACTION
                and waiting < self.allowance / 2)


class RateMeter:
    """Growth of ``total`` per second, measured over windows of at least ``window_s`` that close
    when :meth:`rate` is called. Between closes it reports the last window's rate, or the open
    window's so far once that is a quarter window old and higher: a rising rate (a consumer's
    first seconds) is seen at once, a falling one a window late, which errs toward a longer local
    queue, never toward idle replicas."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self.total = 0
        self._rate = 0.0
        self._mark: tuple[float, int] | None = None

    def rate(self, now: float) -> float:
        if self._mark is None:
            self._mark = (now, self.total)
            return self._rate
        since, count = self._mark
        elapsed = now - since
        if elapsed >= self.window_s:
            self._rate = (self.total - count) / elapsed
            self._mark = (now, self.total)
            return self._rate
        if elapsed >= self.window_s / 4:
            return max(self._rate, (self.total - count) / elapsed)
        return self._rate


class FlowControl:
    """One consumer's pause state; :meth:`apply` pauses or resumes its partitions (only outage
    pauses are warnings: the others are routine under load)."""

    def __init__(self, bounds: Backpressure, *, poll_s: float | None = None) -> None:
        """``poll_s``: a poll's wait, busy or idle (the provisional consumer's: latency over CPU)."""
        self.bounds = bounds
        self._poll_s = poll_s
        self.held: set[tuple[str, int]] = set()  # partitions the lanes hold (streams.engine.lanes): never resumed here
        self.paused = False
        self.outage = False  # paused because no replica was healthy
        self._held_since: float | None = None  # polling held: replicas and local queue full

    def poll_size(self, now: float, inflight_events: int, waiting: int, free_slots: int) -> int:
        """Records to ask for now; 0: hold polling for a moment (see the module doc)."""
        size = self.bounds.poll_size(inflight_events, waiting, free_slots)
        if size or self.paused:
            self._held_since = None
            return max(size, 1)
        if self._held_since is None:
            self._held_since = now
        return 0

    def poll_timeout(self, got_records: bool) -> float:
        """How long a poll may wait: briefly while records flow or backpressure holds them (a late
        resume idles replicas), longer when idle or in an outage."""
        if self._poll_s is not None:
            return self._poll_s
        busy = (self.paused and not self.outage) or (got_records and not self.paused)
        return BUSY_POLL_TIMEOUT_S if busy else POLL_TIMEOUT_S

    def apply(self, consumer: Any, now: float, *, inflight_events: int, waiting: int, healthy: bool,
              decided: int, blocked: str | None = None) -> None:
        """Pause or resume every assigned partition. ``decided``: replica answers plus dedupe cache
        hits so far (:meth:`Backpressure.update`); ``blocked``: an outage other than the replicas'
        holds events back (the Schema Registry), named in the log."""
        self.bounds.update(now, decided)
        available = healthy and blocked is None
        if self.paused:
            if self.bounds.may_resume(inflight_events, waiting, available):
                consumer.resume(self._unheld(consumer.assignment()))
                self.paused = False
                log.log(logging.INFO if self.outage else logging.DEBUG, "resumed partitions in_flight=%d",
                        inflight_events)
                self.outage = False
            elif not available and not self.outage:
                self.outage = True
                log.warning("paused partitions: %s in_flight_events=%d", blocked or "no healthy replica",
                            inflight_events)
            return
        held = now - self._held_since if self._held_since is not None else 0.0
        reason = blocked or self.bounds.reason_to_pause(inflight_events, waiting, healthy, held)
        parts = consumer.assignment() if reason else []
        if parts:
            consumer.pause(parts)
            self.paused, self.outage = True, not available
            log.log(logging.WARNING if self.outage else logging.DEBUG,
                    "paused partitions: %s in_flight_events=%d waiting_for_replica=%d", reason, inflight_events,
                    waiting)

    def assigned(self, consumer: Any, partitions: list[Any]) -> None:
        """Set newly assigned partitions' pause state explicitly: a partition coming back to this
        member may still carry the pause it had when it was revoked, and would never be fetched."""
        if partitions:
            held = [p for p in partitions if (p.topic, p.partition) in self.held]
            if held:
                consumer.pause(held)
            rest = self._unheld(partitions)
            if rest:
                (consumer.pause if self.paused else consumer.resume)(rest)

    def _unheld(self, partitions: list[Any]) -> list[Any]:
        held = self.held
        return [p for p in partitions if (p.topic, p.partition) not in held] if held else partitions
