"""Adaptive in-flight limit per replica (AIMD on the replica's own queue), pure and clock-injected.

vLLM runs at most ``max_num_seqs`` sequences; requests beyond that wait in its queue, adding
latency without adding throughput. The controller starts at ``initial`` (by default the maximum,
``replicas.max_inflight_per_replica``, so a fresh consumer fills the GPU at once), cuts the limit
(at most once per ``cooldown_s``) when the replica's ``vllm:num_requests_waiting`` grows past
the queue target (below), and while the limit is what holds us back grows it again: one request per
completion (slow start) until the first cut and whenever the replica reports an empty queue next
to its running count twice in a row (it has room; a sized cut undoes any overshoot), otherwise
about one per round trip (additive increase), as TCP does; a round trip here is a whole
generation (seconds), too slow to refill a GPU after a deep cut. It stays within [``minimum``,
``maximum``]. Replicas that publish no queue metric keep the fixed maximum.

The cut is sized by the replica's own numbers when it also reports ``vllm:num_requests_running``
(R) next to the queue (W): the factor ``(R + target) / (R + W)`` is the one that would
bring the replica's total demand down to what it runs plus the target queue, and the new limit is
our requests in flight times that factor. Every consumer sharing the replica sees the same factor,
so together they land there in one step however many they are (and keep their relative shares,
which additive increase then evens out). A cut at most halves the limit (``max_cut``: one bad
scrape, e.g. of a replica that just restarted with nothing running yet, cannot collapse it); the
fixed ``decrease`` applies only without R. A consumer with nothing in flight to the replica does not
cut at all: the queue is other clients'.

The queue it keeps is ``target``: ``waiting_target`` (4), or more when the consumer is slow to
notice completions. Under load the consumer handles replica responses in batches ``reaction_s``
apart (``batching.io_batch_ms``); a slot that frees meanwhile idles the GPU unless a request is
already waiting there, so the target covers ``QUEUE_COVER`` times the completions expected within
that time (our own completion rate, measured between readings; each consumer sharing a replica
covers its own). That needs a ceiling above the replica's ``--max-num-seqs``.

What this buys, measured with the simulator: docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass

QUEUE_COVER = 2.0  # keep twice the completions expected within one reaction time waiting


@dataclass
class AimdLimit:
    maximum: int
    minimum: int = 4
    initial: int | None = None
    waiting_target: float = 4.0  # the queue kept at the replica, at least (see ``target``)
    reaction_s: float = 0.0  # how late we may notice a completion (the consumer's I/O batching)
    decrease: float = 0.8
    max_cut: float = 0.5
    cooldown_s: float = 1.0
    limit: float = 0.0
    waiting: float | None = None
    sized_cuts: bool = False  # the replica reports its running count: cuts are sized by it
    empty_scrapes: int = 0  # consecutive readings of an empty queue
    target: float = 0.0  # the queue to keep now: waiting_target, or more to cover reaction_s
    _last_cut: float = -1e18
    _completions: int = 0
    _last_reading: float | None = None

    def __post_init__(self) -> None:
        self.minimum = min(self.minimum, self.maximum)  # a replica allowed 2 requests gets 2, never 4
        start = self.maximum if self.initial is None else self.initial
        self.limit = float(max(self.minimum, min(start, self.maximum)))
        self.target = self.waiting_target

    @property
    def value(self) -> int:
        """The current limit; the fixed maximum when the replica reports no queue."""
        return self.maximum if self.waiting is None else max(self.minimum, int(self.limit))

    def observe_queue(self, waiting: float, now: float, running: float | None = None,
                      inflight: int | None = None) -> None:
        """A fresh ``num_requests_waiting`` reading, with ``num_requests_running`` when the replica
        reports it and our own requests in flight to it at the time (default: the limit)."""
        self.waiting = waiting
        self.sized_cuts = running is not None
        self.empty_scrapes = self.empty_scrapes + 1 if waiting == 0 else 0
        if self._last_reading is not None and now > self._last_reading:
            rate = self._completions / (now - self._last_reading)
            self.target = max(self.waiting_target, QUEUE_COVER * rate * self.reaction_s)
        self._completions, self._last_reading = 0, now
        if inflight == 0:
            return  # none of that queue is ours: cutting an unused limit would only slow our start later
        if waiting > self.target and now - self._last_cut >= self.cooldown_s:
            if running is None:
                self.limit *= self.decrease
            else:
                # Scale what we have out now, not the limit: right after a cut our requests still
                # queue there, and scaling the limit again would cut below the replica's capacity.
                demand = self.limit if inflight is None else float(inflight)
                share = demand * (running + self.target) / (running + waiting)
                self.limit = min(self.limit, max(self.limit * self.max_cut, share))
            self.limit = max(float(self.minimum), self.limit)
            self._last_cut = now

    def on_success(self, inflight: int) -> None:
        """A request finished; grow only when the limit (not the offered load) is the bottleneck."""
        self._completions += 1
        if self.waiting is None or self.waiting > self.target or inflight + 1 < self.value:
            return
        # See the module doc: slow start while the replica has room, additive increase at capacity.
        room = self.empty_scrapes >= 2 and self.sized_cuts
        step = 1.0 if room or self._last_cut < -1e17 else 1.0 / max(self.limit, 1.0)
        self.limit = min(float(self.maximum), self.limit + step)
