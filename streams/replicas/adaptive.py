"""Adaptive in-flight limit per replica (AIMD on the replica's own queue), pure and clock-injected.

vLLM runs at most ``max_num_seqs`` sequences; requests beyond that wait in its queue, adding
latency without adding throughput. The controller starts at ``initial`` (by default the maximum,
``replicas.max_inflight_per_replica``, so a fresh consumer fills the GPU at once), cuts the limit by
``decrease`` (at most once per ``cooldown_s``) when the replica's ``vllm:num_requests_waiting``
grows past ``waiting_target``, and while the limit is what holds us back grows it again: one
request per completion (slow start) until the first cut, then about one per round trip (additive
increase), as TCP does. It stays within [``minimum``, ``maximum``]. Replicas that publish no queue
metric keep the fixed maximum.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AimdLimit:
    maximum: int
    minimum: int = 4
    initial: int | None = None
    waiting_target: float = 4.0
    decrease: float = 0.8
    cooldown_s: float = 1.0
    limit: float = 0.0
    waiting: float | None = None
    _last_cut: float = -1e18

    def __post_init__(self) -> None:
        start = self.maximum if self.initial is None else self.initial
        self.limit = float(max(self.minimum, min(start, self.maximum)))

    @property
    def value(self) -> int:
        """The current limit; the fixed maximum when the replica reports no queue."""
        return self.maximum if self.waiting is None else max(self.minimum, int(self.limit))

    def observe_queue(self, waiting: float, now: float) -> None:
        """A fresh ``num_requests_waiting`` reading."""
        self.waiting = waiting
        if waiting > self.waiting_target and now - self._last_cut >= self.cooldown_s:
            self.limit = max(float(self.minimum), self.limit * self.decrease)
            self._last_cut = now

    def on_success(self, inflight: int) -> None:
        """A request finished; grow only when the limit (not the offered load) is the bottleneck."""
        if self.waiting is None or self.waiting > self.waiting_target or inflight + 1 < self.value:
            return
        step = 1.0 if self._last_cut < -1e17 else 1.0 / max(self.limit, 1.0)
        self.limit = min(float(self.maximum), self.limit + step)
