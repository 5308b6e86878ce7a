from __future__ import annotations

import asyncio

import pytest

from streams.errors import ErrorType, PoisonError
from streams.inference.cache import DedupeCache, cache_key, normalise


def test_normalisation_and_key_scope() -> None:
    assert normalise("  Buy\u00a0NOW\n\tcheap ") == "buy now cheap"
    assert normalise("ﬁve Ｆｕｌｌ\u2003width\u3000Straße") == "five full width strasse"  # NFKC + casefold
    assert normalise("a\x1cb\u2028c\r\n") == "a b c"
    k = cache_key("Buy now", "1-aaaa", "spam", "m", "low")
    assert k == cache_key("  buy   NOW ", "1-aaaa", "spam", "m", "low")
    assert k != cache_key("Buy now", "2-bbbb", "spam", "m", "low")  # a new policy version decides again
    assert k != cache_key("Buy now", "1-aaaa", "spam", "m", "high")
    assert len(k) == 16


async def test_hits_lru_and_single_flight() -> None:
    cache: DedupeCache[int] = DedupeCache(max_entries=2)
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return calls

    results = await asyncio.gather(*(cache.get_or_compute(b"a", compute) for _ in range(10)))
    assert calls == 1 and {v for v, _ in results} == {1}  # ten concurrent duplicates, one request
    assert sum(1 for _, hit in results if hit) == 9
    await cache.get_or_compute(b"b", compute)
    await cache.get_or_compute(b"c", compute)  # evicts "a"
    assert len(cache) == 2
    _, hit = await cache.get_or_compute(b"a", compute)
    assert not hit and cache.lookups == 13 and cache.hits == 9


async def test_failures_are_not_cached() -> None:
    cache: DedupeCache[int] = DedupeCache(max_entries=10)

    async def boom() -> int:
        raise ValueError("nope")

    with pytest.raises(ValueError):
        await cache.get_or_compute(b"k", boom)

    async def ok() -> int:
        return 7

    assert await cache.get_or_compute(b"k", ok) == (7, False)


async def test_bounded_by_bytes_as_well_as_entries() -> None:
    cache: DedupeCache[str] = DedupeCache(max_entries=100, max_bytes=1000, size=len)

    async def value(n: int) -> str:
        return "x" * n

    for i in range(5):
        await cache.get_or_compute(f"k{i}".encode(), lambda: value(300))
    assert len(cache) == 3 and cache.bytes == 900  # the two oldest went to stay under 1000 bytes
    assert cache.peek(b"k0") is None and cache.peek(b"k4") == "x" * 300
    # A value larger than the whole budget is returned but not kept (it would evict everything).
    v, hit = await cache.get_or_compute(b"huge", lambda: value(5000))
    assert len(v) == 5000 and not hit and cache.peek(b"huge") is None and len(cache) == 3
    with pytest.raises(ValueError):
        DedupeCache(10, max_bytes=100)


@pytest.mark.parametrize("reasoning_chars", [200, 1_000, 6_000, 30_000])
def test_decision_size_estimate_matches_measured_memory(reasoning_chars: int) -> None:
    """The byte bound is only as good as the estimate: compare it with what tracemalloc sees for
    decisions built the way the replica client builds them (parsed from JSON) and held in the LRU."""
    import tracemalloc

    import orjson

    from streams.inference.labeler import Decision, decision_bytes
    from streams.inference.verdict import Verdict

    def decision(i: int) -> Decision:
        doc = orjson.loads(orjson.dumps({"reasoning": f"{i} " + "the user asks to buy now. " * (reasoning_chars // 26),
                                         "rationale": f"Promotional spam with a link, case {i}.",
                                         "category": "SP2", "rule_ids": ["SP2.a", "SP2.b"]}))
        v = Verdict(True, doc["category"], doc["rule_ids"], "high", doc["rationale"])
        return Decision(v, doc["reasoning"], 900, reasoning_chars // 4, 1)

    async def fill(cache: DedupeCache[Decision], n: int) -> None:
        for i in range(n):
            d = decision(i)
            await cache.get_or_compute(cache_key(f"content {i}", "1-a", "spam", "m", "low"), lambda d=d: _ready(d))

    cache: DedupeCache[Decision] = DedupeCache(10_000, max_bytes=2**40, size=decision_bytes)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(fill(cache, 500))
    measured = (tracemalloc.get_traced_memory()[0] - before) / 500
    tracemalloc.stop()
    estimated = cache.bytes / 500
    assert 0.8 * measured <= estimated <= 1.3 * measured, (estimated, measured)


async def _ready(value: object) -> object:
    return value


async def test_waiters_of_a_failed_leader_get_its_failure_and_no_request_of_their_own() -> None:
    cache: DedupeCache[int] = DedupeCache(max_entries=10)
    calls, gate = [], asyncio.Event()

    async def fails() -> int:
        calls.append(1)
        await gate.wait()
        raise PoisonError(ErrorType.UNPARSEABLE_OUTPUT, "no verdict (after 5 attempts)")

    tasks = [asyncio.create_task(cache.get_or_compute(b"k", fails)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert len(calls) == 1  # one set of requests for the content, not one per duplicate
    assert all(isinstance(r, PoisonError) and r.error_type == ErrorType.UNPARSEABLE_OUTPUT for r in results)
    assert cache.peek(b"k") is None  # and the failure is not kept


async def test_a_cancelled_leader_hands_the_flight_to_one_waiter() -> None:
    cache: DedupeCache[int] = DedupeCache(max_entries=10)
    calls: list[int] = []
    gate = asyncio.Event()

    async def slow() -> int:
        calls.append(1)
        await gate.wait()
        return 42

    leader = asyncio.create_task(cache.get_or_compute(b"k", slow))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(cache.get_or_compute(b"k", slow)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()  # its partition was revoked
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*waiters)
    assert leader.cancelled() and len(calls) == 2  # the leader's, and one waiter's in its place
    assert sorted(results) == [(42, False), (42, True), (42, True)]
