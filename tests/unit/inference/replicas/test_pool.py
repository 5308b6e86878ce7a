"""The pool's routing, retry, Retry-After and health logic over fake backends (the client-factory
seam): no HTTP, no timers beyond the pool's own short ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from streams.config import ReplicaSettings
from streams.errors import ErrorType, PoisonError, RetryableError
from streams.inference.replicas.backend import Backend, Capacity
from streams.inference.replicas.client import ChatResult, QueueState
from streams.inference.replicas.pool import ReplicaPool

Answer = Callable[[dict[str, Any]], ChatResult]


class FakeBackend:
    """A replica whose answers the test scripts: each call pops the next behaviour (an exception to
    raise, or None to answer), then answers by default."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.script: list[BaseException | None] = []
        self.chats: list[dict[str, Any]] = []
        self.healthy_after = 0  # /health answers False this many times, then True
        self.health_checks = 0
        self.closed = False
        self.gate: asyncio.Event | None = None  # set: requests wait for it (work in flight)

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        self.chats.append(body)
        if self.gate is not None:
            await self.gate.wait()
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        return ChatResult(content="0", reasoning=None, finish_reason="stop", prompt_tokens=1, completion_tokens=1,
                          replica=self.base_url, latency_s=0.001)

    async def health(self, timeout_s: float = 2.0) -> bool:
        self.health_checks += 1
        return self.health_checks > self.healthy_after

    async def queue_state(self, timeout_s: float = 2.0) -> QueueState | None:
        return None

    def close(self) -> None:
        self.closed = True


def pool_of(*urls: str, retry_after_max_s: float = 5.0, **kwargs: Any) -> tuple[ReplicaPool, dict[str, FakeBackend]]:
    backends = {u: FakeBackend(u) for u in urls}
    settings = ReplicaSettings(urls=list(urls), adaptive_concurrency=False, max_inflight_per_replica=4,
                               retry_after_max_s=retry_after_max_s)
    defaults: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "probe_interval_s": 0.01}
    return ReplicaPool(settings, client_factory=backends.__getitem__, **{**defaults, **kwargs}), backends


A, B = "http://a/v1", "http://b/v1"


def test_the_pool_and_the_client_meet_the_seams() -> None:
    pool, backends = pool_of(A)
    capacity: Capacity = pool  # what the pipeline reads
    backend: Backend = backends[A]  # what the pool drives
    assert capacity.healthy_count == 0 and backend.base_url == A  # no replica until the pool is entered


def test_a_failure_is_retried_at_once_on_the_other_replica_never_given_up() -> None:
    async def main() -> None:
        pool, fakes = pool_of(A, B)
        order: list[str] = []
        for fake in fakes.values():
            fake.script = [RetryableError("HTTP 503", replica=fake.base_url)] * 2
            fake.chat = _logged(fake, order)  # type: ignore[method-assign]
        async with pool:
            result = await pool.chat({"n": 1})
            assert result.content == "0" and pool.inflight == 0 and pool.healthy_count == 2
        assert len(order) == 5  # four failures, then an answer: the consumer never gives up
        assert all(a != b for a, b in zip(order, order[1:], strict=False))  # each retry went elsewhere
        assert fakes[A].closed and fakes[B].closed

    asyncio.run(main())


def _logged(fake: FakeBackend, order: list[str]) -> Any:
    chat = fake.chat

    async def logged(body: dict[str, Any]) -> ChatResult:
        order.append(fake.base_url)
        return await chat(body)
    return logged


def test_the_retry_avoids_the_replica_that_failed_even_when_it_is_the_least_loaded() -> None:
    async def main() -> None:
        pool, fakes = pool_of(A, B)
        fakes[A].script = [RetryableError("HTTP 500", replica=A)]
        async with pool:
            fakes[B].gate = asyncio.Event()
            blocker = asyncio.create_task(pool.chat({"held": 1}))  # ties rotate: the first pick is B
            await asyncio.sleep(0.01)
            assert fakes[B].chats == [{"held": 1}] and not fakes[A].chats  # A is the least loaded now
            request = asyncio.create_task(pool.chat({"n": 1}))
            await asyncio.sleep(0.05)
            assert fakes[A].chats[-1] == {"n": 1} and fakes[B].chats[-1] == {"n": 1}  # failed on A, retried on B
            fakes[B].gate.set()
            await asyncio.gather(request, blocker)

    asyncio.run(main())


def test_a_poisoned_request_is_not_retried() -> None:
    async def main() -> None:
        pool, fakes = pool_of(A, B)
        fakes[A].script = [PoisonError(ErrorType.REQUEST_REJECTED, "HTTP 400: too long")]
        fakes[B].script = [PoisonError(ErrorType.REQUEST_REJECTED, "HTTP 400: too long")]
        async with pool:
            with pytest.raises(PoisonError):
                await pool.chat({})
            assert len(fakes[A].chats) + len(fakes[B].chats) == 1 and pool.inflight == 0

    asyncio.run(main())


def test_retry_after_pauses_the_replica_for_the_capped_time_not_the_hour_it_asked() -> None:
    async def main() -> None:
        pool, fakes = pool_of(A, retry_after_max_s=0.3)
        fakes[A].script = [RetryableError("HTTP 429", replica=A, retry_after=3600)]
        loop = asyncio.get_running_loop()
        async with pool:
            started = loop.time()
            result = await pool.chat({"x": 1})  # the only replica: the retry waits out the pause
            elapsed = loop.time() - started
        assert result.content == "0" and fakes[A].chats == [{"x": 1}, {"x": 1}]
        assert 0.29 <= elapsed < 30, elapsed  # the capped pause, never the hour it asked for

    asyncio.run(main())


def test_while_a_replica_is_paused_by_retry_after_the_others_take_its_requests() -> None:
    async def main() -> None:
        pool, fakes = pool_of(A, B, retry_after_max_s=60)
        fakes[A].script = [RetryableError("HTTP 503", replica=A, retry_after=30)]
        async with pool:
            while not fakes[A].chats:  # sequential requests rotate: A is hit within two
                await pool.chat({"warm": len(fakes[B].chats)})
            paused_at = len(fakes[A].chats)
            await asyncio.gather(*(pool.chat({"n": i}) for i in range(6)))
            assert len(fakes[A].chats) == paused_at  # all six went to B, none waited
            assert pool.healthy_count == 2  # a pause is not a failure: A stays in rotation

    asyncio.run(main())


def test_a_replica_failing_in_a_row_leaves_rotation_and_returns_once_health_answers() -> None:
    async def main() -> None:
        pool, fakes = pool_of(A, B, failure_threshold=3)
        fakes[A].script = [RetryableError("HTTP 502", replica=A)] * 3
        fakes[A].healthy_after = 2
        async with pool:
            fakes[B].gate = asyncio.Event()  # B full, so A takes the requests and fails them
            blockers = [asyncio.create_task(pool.chat({"b": i})) for i in range(4)]
            await asyncio.sleep(0.01)
            requests = [asyncio.create_task(pool.chat({"a": i})) for i in range(3)]
            for _ in range(200):
                if pool.healthy_count == 1:
                    break
                await asyncio.sleep(0.005)
            assert pool.healthy_count == 1, "three failures in a row did not take A out"
            assert pool.health_changed.is_set()
            pool.health_changed.clear()
            for _ in range(200):
                if pool.healthy_count == 2:
                    break
                await asyncio.sleep(0.01)
            assert pool.healthy_count == 2 and fakes[A].health_checks == 3  # two failed probes, then back
            fakes[B].gate.set()
            results = await asyncio.gather(*requests, *blockers)
            assert all(r.content == "0" for r in results)  # nothing given up on

    asyncio.run(main())


def test_with_a_retry_limit_a_pool_with_no_healthy_replica_fails_fast() -> None:
    async def main() -> None:
        pool, fakes = pool_of(A, retry_limit=1, failure_threshold=1)
        fakes[A].script = [RetryableError("refused", replica=A)] * 5
        fakes[A].healthy_after = 10**9
        async with pool:
            with pytest.raises(RetryableError):
                await pool.chat({})
            assert len(fakes[A].chats) == 1 and pool.healthy_count == 0

    asyncio.run(main())


def test_requests_waiting_for_a_slot_go_by_lane_then_record_time_and_none_barges_ahead() -> None:
    """Every slot busy, then requests arrive in the worst order (the backlog first): as slots free
    up one at a time they go priority first, the oldest record first within a priority, and a
    request arriving later in a later lane never takes a freed slot ahead of them."""
    from streams.inference.replicas.pool import Lane

    async def main() -> list[str]:
        pool, fakes = pool_of(A)
        fake = fakes[A]
        fake.gate = asyncio.Event()
        served: list[str] = []
        async with pool:
            blockers = [asyncio.create_task(pool.chat({"id": f"busy{i}"})) for i in range(4)]  # the 4 slots
            await asyncio.sleep(0.01)
            lanes = [("backlog-new", Lane(2, 20.0)), ("backlog-old", Lane(2, 10.0)), ("urgent", Lane(0, 30.0)),
                     ("live", Lane(1, 5.0))]
            waiting = [asyncio.create_task(pool.chat({"id": name}, lane)) for name, lane in lanes]
            await asyncio.sleep(0.01)
            assert pool.waiting == 4
            fake.chat = _serving(fake, served)  # type: ignore[method-assign]
            fake.gate.set()  # the blockers finish; each freed slot takes the best waiter
            late = asyncio.create_task(pool.chat({"id": "late-backlog"}, Lane(2, 1.0)))
            await asyncio.gather(*blockers, *waiting, late)
        return served

    served = asyncio.run(main())
    assert served[:4] == ["urgent", "live", "backlog-old", "backlog-new"]


def _serving(fake: FakeBackend, served: list[str]) -> Any:
    original = FakeBackend.chat.__get__(fake)

    async def chat(body: dict[str, Any]) -> ChatResult:
        if not str(body["id"]).startswith("busy"):
            served.append(body["id"])
        return await original(body)
    return chat
