"""Replica pool: least-outstanding routing, retries on another replica, health tracking.

Contract of :meth:`ReplicaPool.chat`:
- Many requests are in flight per replica: vLLM's continuous batching needs hundreds of running
  sequences to fill a GPU. The per-replica limit adapts (:mod:`streams.inference.replicas.adaptive`) to the
  replica's own queue, up to ``max_inflight_per_replica``. When every replica is at its limit,
  callers wait for a slot in their :class:`Lane`'s order: priority first (lower is sooner), then
  the oldest record, then arrival. vLLM never preempts a running request for a more urgent one and
  orders only its own waiting queue, so this queue, kept in front of the replicas' short ones, is
  where an urgent event overtakes a backlog.
- Each request goes to the healthy replica with the fewest outstanding requests (ties rotate, so a
  burst does not land on one replica).
- ``RetryableError`` (timeouts, 5xx, refused, 429) is retried with capped exponential backoff on a
  different replica when there is one, for as long as it takes: GPUs being down is never a reason
  to dead-letter or drop an event. A replica that answers with ``Retry-After`` gets no new requests
  for that long, capped at ``replicas.retry_after_max_s`` (a server asking for an hour must not
  park requests for an hour), while the others keep serving; the request goes to another replica
  at once, or waits for the pause to end when no other can take it. (Interactive tools pass
  ``retry_limit`` to fail instead.) ``PoisonError`` propagates at once.
- A replica failing ``failure_threshold`` times in a row is taken out and probed via ``/health``
  until it answers 200; while no replica is healthy, :attr:`healthy_count` is 0 and the pipeline
  pauses its partitions.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.config import ReplicaSettings
from streams.errors import RetryableError
from streams.inference.replicas.adaptive import AimdLimit
from streams.inference.replicas.backend import Backend, ClientFactory
from streams.inference.replicas.client import ChatResult, ReplicaClient
from streams.ops.logutil import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Replica:
    client: Backend
    aimd: AimdLimit
    inflight: int = 0
    failures: int = 0
    healthy: bool = True
    cool_until: float = 0.0  # loop time before which it asked (Retry-After) not to get requests
    probe: asyncio.Task[None] | None = field(default=None, repr=False)


Observer = Callable[[str, str, float, int], None]  # (replica, outcome, latency_s, inflight)


@dataclass(frozen=True, slots=True)
class Lane:
    """Where a request waits for a slot: by ``priority`` (lower first), then ``since`` (its record's
    time: the oldest first); ``on_sent`` runs once it has a replica slot (the lane wait metric)."""

    priority: int = 1
    since: float = 0.0
    on_sent: Callable[[], None] | None = None


DEFAULT_LANE = Lane()


class ReplicaPool:
    """Routes chat requests over replicas. Use as ``async with ReplicaPool(...) as pool``."""

    def __init__(
        self,
        settings: ReplicaSettings,
        *,
        reaction_s: float = 0.0,
        observer: Observer | None = None,
        retry_limit: int | None = None,
        failure_threshold: int = 3,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        probe_interval_s: float = 1.0,
        client_factory: ClientFactory | None = None,
    ) -> None:
        """``settings``: the ``replicas`` section (URLs, in-flight maximum, timeout, API key, adaptive
        limit). ``reaction_s``: how late the caller notices a completion (its I/O batching, see
        :mod:`streams.inference.replicas.adaptive`). ``retry_limit``: give up after that many retries
        (interactive tools); None retries for as long as it takes (the consumer). ``client_factory``:
        makes each replica's backend from its URL (default: vLLM's HTTP API with the settings'
        timeout and API key)."""
        self._urls = list(settings.urls)
        self._cap = settings.max_inflight_per_replica
        self._timeout = settings.request_timeout_s
        self._api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self._adaptive = settings.adaptive_concurrency
        self._retry_after_max = settings.retry_after_max_s
        self._failure_threshold = failure_threshold
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._probe_interval = probe_interval_s
        self._retry_limit = retry_limit
        self._reaction_s = reaction_s
        self._scrapers: list[asyncio.Task[None]] = []
        self._observer = observer
        self._replicas: list[_Replica] = []
        self._waiters: list[tuple[int, float, int, asyncio.Future[_Replica]]] = []  # a heap, by lane
        self._arrival = itertools.count()
        self.waiting = 0  # requests waiting for a slot right now
        self.answered = 0  # requests answered so far (all replicas)
        self._rr = 0
        self.health_changed = asyncio.Event()
        self._retry_log = RateLimitedLog(log)
        self._client_factory = client_factory or self._http_client

    def _http_client(self, url: str) -> Backend:
        return ReplicaClient(url, api_key=self._api_key, timeout_s=self._timeout)

    async def __aenter__(self) -> ReplicaPool:
        self._replicas = [
            _Replica(self._client_factory(u), AimdLimit(maximum=self._cap, reaction_s=self._reaction_s))
            for u in self._urls
        ]
        if self._adaptive:
            self._scrapers = [asyncio.create_task(self._scrape(r)) for r in self._replicas]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._scrapers:
            task.cancel()
        for r in self._replicas:
            if r.probe is not None:
                r.probe.cancel()
            r.client.close()

    @property
    def healthy_count(self) -> int:
        return sum(1 for r in self._replicas if r.healthy)

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self._replicas)

    @property
    def free_slots(self) -> int:
        """Requests the healthy replicas would take now, within their in-flight limits."""
        return sum(max(0, r.aimd.value - r.inflight) for r in self._replicas if r.healthy)

    def replica_states(self) -> dict[str, tuple[bool, int, int]]:
        """``{url: (healthy, inflight, in-flight limit)}`` for metrics and readiness."""
        return {r.client.base_url: (r.healthy, r.inflight, r.aimd.value) for r in self._replicas}

    async def _scrape(self, replica: _Replica, interval_s: float = 1.0) -> None:
        """Feed the replica's queue (waiting and running) to its adaptive limit, once a second."""
        loop = asyncio.get_running_loop()
        while True:
            if replica.healthy:  # an unhealthy replica is already being probed
                try:
                    state = await replica.client.queue_state()
                except RetryableError as exc:
                    # An unreachable replica is noticed even with no traffic, so readiness is honest.
                    self._count_failure(replica, exc)
                else:
                    if state is not None:
                        replica.aimd.observe_queue(state.waiting, loop.time(), state.running, replica.inflight)
                        self._serve_waiters()  # a raised limit frees slots with no request ending
            await asyncio.sleep(interval_s)

    async def chat(self, body: dict[str, Any], lane: Lane = DEFAULT_LANE) -> ChatResult:
        """Send one request, retrying retryable failures until a replica answers (see module doc)."""
        attempt = 0
        avoid: _Replica | None = None
        sent = lane.on_sent
        while True:
            replica = await self._acquire(avoid, lane)
            if sent is not None:
                sent()
                sent = None
            try:
                result = await replica.client.chat(body)
            except RetryableError as exc:
                self._release(replica)
                self._on_failure(replica, exc)
                attempt += 1
                avoid = replica
                if self._retry_limit is not None and attempt > self._retry_limit:
                    raise
                if exc.retry_after is not None:
                    # The replica asked for a pause: no new requests go to it until then (capped at
                    # replicas.retry_after_max_s), and this one is retried at once elsewhere if it can be.
                    delay = 0.0
                    self._cool(replica, min(exc.retry_after, self._retry_after_max))
                else:
                    delay = self._backoff(attempt)
                self._log_retry(replica, attempt, delay, exc)
                if delay:
                    await asyncio.sleep(delay)
                continue
            except BaseException:
                self._release(replica)
                raise
            self._release(replica)
            self._on_success(replica, result.latency_s)
            return result

    def _log_retry(self, replica: _Replica, attempt: int, delay: float, exc: RetryableError) -> None:
        # Hundreds of requests fail together when a replica dies: one line per replica per 5 s.
        self._retry_log.log(logging.WARNING, replica.client.base_url,
                            "inference retry replica=%s attempt=%d delay_s=%.2f error=%s",
                            replica.client.base_url, attempt, delay, exc)

    def _cool(self, replica: _Replica, pause_s: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + pause_s
        if until > replica.cool_until:
            replica.cool_until = until
            loop.call_at(until, self._wake_all)  # requests waiting for a slot may take it again then

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_base * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)

    async def _acquire(self, avoid: _Replica | None, lane: Lane = DEFAULT_LANE) -> _Replica:
        """A replica slot: at once when one is free and nobody waits; else in lane order, handed over
        by :meth:`_serve_waiters` as slots free up (a slot never sits free while a request waits, so
        a later arrival in a later lane cannot take it first)."""
        if not self._someone_waits():
            replica = self._pick(avoid)
            if replica is not None:
                replica.inflight += 1
                return replica
        if self._retry_limit is not None and self.healthy_count == 0:
            raise RetryableError("no healthy replica: " + ", ".join(r.client.base_url for r in self._replicas))
        waiter: asyncio.Future[_Replica] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (lane.priority, lane.since, next(self._arrival), waiter))
        self.waiting += 1
        self._serve_waiters()  # a slot may be free behind the ones waiting
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed a slot, then cancelled: give it back
            raise
        finally:
            self.waiting -= 1

    def _someone_waits(self) -> bool:
        waiters = self._waiters
        while waiters and waiters[0][-1].done():  # cancelled while waiting
            heapq.heappop(waiters)
        return bool(waiters)

    def _serve_waiters(self) -> None:
        """Hand free slots to the waiting requests, the first lane first."""
        waiters = self._waiters
        while self._someone_waits():
            if self._retry_limit is not None and self.healthy_count == 0:
                error = RetryableError("no healthy replica: " + ", ".join(r.client.base_url for r in self._replicas))
                while waiters:
                    waiter = heapq.heappop(waiters)[-1]
                    if not waiter.done():
                        waiter.set_exception(error)
                return
            replica = self._pick(None)
            if replica is None:
                return
            replica.inflight += 1
            heapq.heappop(waiters)[-1].set_result(replica)

    def _pick(self, avoid: _Replica | None) -> _Replica | None:
        replicas = self._replicas
        n = len(replicas)
        best: _Replica | None = None
        fallback: _Replica | None = None
        self._rr = (self._rr + 1) % n
        now = 0.0
        for i in range(n):
            r = replicas[(self._rr + i) % n]
            if not r.healthy or r.inflight >= r.aimd.value:
                continue
            if r.cool_until:
                now = now or asyncio.get_running_loop().time()
                if r.cool_until > now:
                    continue
            if r is avoid:
                fallback = r
                continue
            if best is None or r.inflight < best.inflight:
                best = r
        return best or fallback

    def _release(self, replica: _Replica) -> None:
        replica.inflight -= 1
        self._serve_waiters()

    def _wake_all(self) -> None:
        self._serve_waiters()

    def _on_success(self, replica: _Replica, latency: float) -> None:
        self.answered += 1
        replica.failures = 0
        replica.aimd.on_success(replica.inflight)
        if self._observer is not None:
            self._observer(replica.client.base_url, "ok", latency, replica.inflight)

    def _on_failure(self, replica: _Replica, exc: RetryableError) -> None:
        if self._observer is not None:
            self._observer(replica.client.base_url, "error", 0.0, replica.inflight)
        self._count_failure(replica, exc)

    def _count_failure(self, replica: _Replica, exc: RetryableError) -> None:
        replica.failures += 1
        if replica.healthy and replica.failures >= self._failure_threshold:
            replica.healthy = False
            log.error(
                "replica taken out of rotation replica=%s consecutive_failures=%d last_error=%s",
                replica.client.base_url, replica.failures, exc,
            )
            self.health_changed.set()
            replica.probe = asyncio.create_task(self._probe(replica))
            self._serve_waiters()  # an interactive caller with no healthy replica left fails now

    async def _probe(self, replica: _Replica) -> None:
        delay = self._probe_interval
        while not await replica.client.health():
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self._backoff_max)
        replica.failures = 0
        replica.healthy = True
        replica.probe = None
        log.warning("replica back in rotation replica=%s", replica.client.base_url)
        self.health_changed.set()
        self._wake_all()
