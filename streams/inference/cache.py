"""Dedupe cache: identical content under the same policy version, model and effort is decided once.

Fake reviews and spam arrive in near-identical copies; each copy costs hundreds of reasoning tokens.
Keys are a 16-byte digest of (normalised content, policy version, model, effort), so the content
itself is never held; the values are (the consumer's case) decisions with their reasoning text,
which grows with reasoning effort (~1.5 KB per entry at low effort, ~6.5 KB at high, tails 4-5x).
So the LRU is bounded twice: ``max_entries`` and ``max_bytes``, the latter over each value's
``size`` (an estimate, checked against tracemalloc in the tests). Normalisation: Unicode NFKC, case
folding and collapsed whitespace, so trivial variants share an entry. Concurrent duplicates share
one request (single flight) instead of racing to the replica; what they get when that request fails
or is cancelled is described on :meth:`DedupeCache.get_or_compute`.
"""

from __future__ import annotations

import asyncio
import hashlib
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def normalise(text: str) -> str:
    """NFKC (skipped for ASCII, where it is the identity), case folding, whitespace runs to one space."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.casefold().split())


def cache_key(content: str, policy_version: str, policy_id: str, model: str, effort: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (policy_id, policy_version, model, effort, normalise(content)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.digest()


class _LeaderGone(Exception):
    """The caller computing a key was cancelled: its waiters must not inherit that."""


class DedupeCache(Generic[T]):
    """LRU of decided values plus single-flight for keys being decided right now."""

    def __init__(self, max_entries: int, *, max_bytes: int | None = None,
                 size: Callable[[T], int] | None = None) -> None:
        if max_bytes is not None and size is None:
            raise ValueError("max_bytes needs a size function")
        self._max = max_entries
        self._max_bytes = max_bytes
        self._size = size
        self._done: OrderedDict[bytes, tuple[T, int]] = OrderedDict()
        self._flying: dict[bytes, asyncio.Future[T]] = {}
        self.lookups = 0
        self.hits = 0
        self.bytes = 0  # sum of size(value) over the entries held (0 without a size function)

    def __len__(self) -> int:
        return len(self._done)

    def peek(self, key: bytes) -> T | None:
        """The decided value for ``key`` (counted as a lookup, and a hit when present), or None."""
        self.lookups += 1
        entry = self._done.get(key)
        if entry is None:
            return None
        self._done.move_to_end(key)
        self.hits += 1
        return entry[0]

    async def get_or_compute(self, key: bytes, compute: Callable[[], Awaitable[T]], *,
                             counted: bool = False) -> tuple[T, bool]:
        """Return (value, from_cache). ``counted``: this lookup was already counted by a :meth:`peek`
        that missed.

        Single flight: while one caller (the leader) computes a key, the others wait for its
        result. When the leader fails, its waiters get the same exception (the same content under
        the same policy version, model and effort: each waiter's event is dead-lettered with the
        leader's reason, and the failure costs one set of requests, not one per duplicate).
        Failures are never cached: the next caller computes again. When the leader is cancelled
        (its partition was revoked), one of its waiters leads in its place and the rest wait again.
        """
        if not counted:
            self.lookups += 1
        while True:
            entry = self._done.get(key)
            if entry is not None:
                self._done.move_to_end(key)
                self.hits += 1
                return entry[0], True
            flying = self._flying.get(key)
            if flying is None:
                break
            try:
                value = await asyncio.shield(flying)
            except _LeaderGone:
                continue  # the first waiter to run leads now
            self.hits += 1
            return value, True
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._flying[key] = fut
        try:
            value = await compute()
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else _LeaderGone())
                fut.exception()  # mark retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._flying.pop(key, None)
        fut.set_result(value)
        self._store(key, value)
        return value, False

    def _store(self, key: bytes, value: T) -> None:
        size = self._size(value) if self._size is not None else 0
        if self._max_bytes is not None and size > self._max_bytes:
            return  # larger than the whole budget: not worth evicting everything for
        self._done[key] = (value, size)
        self.bytes += size
        while len(self._done) > self._max or (self._max_bytes is not None and self.bytes > self._max_bytes):
            _, (_, evicted) = self._done.popitem(last=False)
            self.bytes -= evicted
