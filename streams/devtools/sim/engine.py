"""Continuous-batching model of a vLLM engine, pure and clock-free (times are GPU seconds).

What it models, after vLLM's scheduler:
- up to ``max_num_seqs`` sequences decode together; every decode step produces one token for each
  running sequence and takes ``profile.step_time(running)``; a sequence leaves the batch as soon as
  it has produced its tokens and a waiting one takes its place at once (no batch barrier);
- admission also needs KV-cache room for the prompt plus headroom for a typical answer;
- prefill of the *uncached* prompt tokens stalls decoding for ``uncached / prefill_tokens_per_s``
  (chunked prefill spreads the same work over steps; the total cost is what matters here);
- automatic prefix caching: a prompt whose policy prefix (system message) was seen recently only
  prefills the rest; an identical prompt prefills nothing but its last token. Hits are counted in
  16-token blocks like vLLM's block manager.
Not modelled: preemption/recompute under KV pressure (admission keeps headroom instead), speculative
decoding, and the CPU overheads that ``--async-scheduling`` hides.

Counters follow vLLM 0.32's (checked against the real engine, docs/development.md): generated tokens
count as they are produced, so an aborted request keeps the tokens it had generated; prompt tokens and
prefix-cache queries count at admission (prefill).

Event-driven: between two events (an arrival, a completion, the end of a prefill stall) the batch
size is constant, so the virtual step counter ``G`` advances linearly with time. Each running
sequence finishes at ``G_admit + output_tokens``; a heap keyed on that gives the next completion
in O(log n).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from streams.ops.profiles import Profile

BLOCK = 16
_EPS = 1e-9


@dataclass(eq=False)
class SimRequest:
    """One generation request inside the engine."""

    prompt_tokens: int
    output_tokens: int
    prefix_key: int
    prefix_tokens: int
    prompt_key: int
    arrival: float = 0.0
    admitted: float | None = None
    finished: float | None = None
    cached_tokens: int = 0
    admit_g: float = 0.0
    finish_g: float = 0.0
    seq: int = 0
    priority: int = 0  # vLLM's request priority: lower is served first, under the priority policy only
    handle: Any = field(default=None, repr=False)


class BatchEngine:
    """The scheduler state; drive it with :meth:`submit`, :meth:`advance` and :meth:`next_event_in`."""

    def __init__(self, profile: Profile, *, prefix_cache_entries: int = 4096, answer_headroom: int = 400,
                 scheduling_policy: str = "fcfs"):
        """``scheduling_policy``: vLLM's ``--scheduling-policy``. ``fcfs`` serves the waiting queue in
        arrival order and ignores a request's priority (as vLLM 0.32 does, silently); ``priority``
        serves the lowest priority first, arrival order within one. Running requests are never
        preempted for a waiting one, under either (measured on the real engine: docs/development.md)."""
        if scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be fcfs or priority, not {scheduling_policy!r}")
        self.scheduling_policy = scheduling_policy
        self.profile = profile
        self.t = 0.0
        self.g = 0.0
        self.stall = 0.0
        self._running: list[tuple[float, int, SimRequest]] = []
        self._waiting: list[tuple[int, int, SimRequest]] = []  # a heap: (priority or 0, arrival seq, request)
        self._prefix_cache: OrderedDict[int, int] = OrderedDict()
        self._prefix_cache_entries = prefix_cache_entries
        self._headroom = answer_headroom
        self._seq = itertools.count()
        self._sum_prompt = 0
        self._sum_admit_g = 0.0
        # counters, exported as vLLM metrics
        self.prompt_tokens_total = 0
        self._generated_done = 0  # tokens of the requests that left the batch (finished or aborted)
        self.prefix_queries_total = 0
        self.prefix_hits_total = 0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def generation_tokens_total(self) -> int:
        """Tokens generated so far, those of the running requests included (vLLM counts every step)."""
        return self._generated_done + int(len(self._running) * self.g - self._sum_admit_g + _EPS)

    def kv_tokens(self) -> float:
        return self._sum_prompt + len(self._running) * self.g - self._sum_admit_g

    def kv_usage(self) -> float:
        return min(1.0, max(0.0, self.kv_tokens() / self.profile.kv_capacity_tokens))

    def submit(self, req: SimRequest, now: float) -> list[SimRequest]:
        """Advance to ``now``, queue the request, admit what fits. Returns requests that finished."""
        finished = self.advance(now)
        req.arrival = now
        req.seq = next(self._seq)
        heapq.heappush(self._waiting, (req.priority if self.scheduling_policy == "priority" else 0, req.seq, req))
        self._admit()
        return finished

    def abort(self, req: SimRequest) -> None:
        """Drop a request (client went away), freeing its slot like vLLM's abort; the tokens it generated
        stay counted."""
        for i, (_, _, r) in enumerate(self._waiting):
            if r is req:
                self._waiting[i] = self._waiting[-1]
                self._waiting.pop()
                heapq.heapify(self._waiting)
                return
        for i, (_, _, r) in enumerate(self._running):
            if r is req:
                self._running[i] = self._running[-1]
                self._running.pop()
                heapq.heapify(self._running)
                self._sum_prompt -= r.prompt_tokens
                self._sum_admit_g -= r.admit_g
                # rounded up, so that the exported counter never steps back at an abort
                self._generated_done += min(r.output_tokens, math.ceil(self.g - r.admit_g - _EPS))
                self._admit()
                return

    def advance(self, now: float) -> list[SimRequest]:
        """Move the engine to time ``now``; returns the requests that completed, in order."""
        finished: list[SimRequest] = []
        while self.t < now - _EPS:
            if self.stall <= _EPS:
                self.stall = 0.0  # float residue of a finished stall, never a wait of its own
            if self.stall > 0:
                d = min(self.stall, now - self.t)
                self.stall -= d
                self.t += d
                continue
            if not self._running:
                self.t = now
                break
            step = self.profile.step_time(len(self._running))
            next_g = self._running[0][0]
            t_next = self.t + max(0.0, next_g - self.g) * step
            if t_next <= now + _EPS:
                self.t = max(self.t, t_next)
                self.g = max(self.g, next_g)
                while self._running and self._running[0][0] <= self.g + _EPS:
                    _, _, r = heapq.heappop(self._running)
                    r.finished = self.t
                    self._sum_prompt -= r.prompt_tokens
                    self._sum_admit_g -= r.admit_g
                    self._generated_done += r.output_tokens
                    finished.append(r)
                self._admit()
            else:
                self.g += (now - self.t) / step
                self.t = now
        return finished

    def next_event_in(self) -> float | None:
        """GPU seconds until the next completion (or end of a stall), None when idle."""
        if self.stall > _EPS:
            return self.stall
        self.stall = 0.0
        if not self._running:
            return None
        step = self.profile.step_time(len(self._running))
        return max(0.0, self._running[0][0] - self.g) * step

    def _admit(self) -> None:
        p = self.profile
        while self._waiting and len(self._running) < p.max_num_seqs:
            req = self._waiting[0][2]
            if self._running and self.kv_tokens() + req.prompt_tokens + self._headroom > p.kv_capacity_tokens:
                break
            heapq.heappop(self._waiting)
            cached = self._lookup_prefix(req)
            req.cached_tokens = cached
            self.prompt_tokens_total += req.prompt_tokens
            self.prefix_queries_total += req.prompt_tokens
            self.prefix_hits_total += cached
            self.stall += (req.prompt_tokens - cached) / p.prefill_tokens_per_s
            req.admitted = self.t
            req.admit_g = self.g
            req.finish_g = self.g + req.output_tokens
            self._sum_prompt += req.prompt_tokens
            self._sum_admit_g += req.admit_g
            heapq.heappush(self._running, (req.finish_g, req.seq, req))

    def _lookup_prefix(self, req: SimRequest) -> int:
        cache = self._prefix_cache
        cached = 0
        if req.prompt_key in cache:
            cache.move_to_end(req.prompt_key)
            cached = max(0, req.prompt_tokens - 1)
        elif req.prefix_key in cache:
            cache.move_to_end(req.prefix_key)
            cached = min(req.prefix_tokens, req.prompt_tokens - 1)
        for key, tokens in ((req.prefix_key, req.prefix_tokens), (req.prompt_key, req.prompt_tokens)):
            cache[key] = tokens
            cache.move_to_end(key)
        while len(cache) > self._prefix_cache_entries:
            cache.popitem(last=False)
        return (cached // BLOCK) * BLOCK
