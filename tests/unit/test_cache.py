from __future__ import annotations

import asyncio

import pytest

from streams.cache import DedupeCache, cache_key, normalise


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
