"""The one index of unsettled events, per partition in offset order, and its contiguous low watermark
(pure: no Kafka, no clock)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from streams.engine.work import TopicPartitionKey, Work


class _Partition:
    """One partition's consumed, unsettled events in offset order, and its watermark."""

    __slots__ = ("works", "done", "position", "committed")

    def __init__(self) -> None:
        self.works: OrderedDict[int, Work] = OrderedDict()  # the oldest is never settled (see settle)
        self.done: set[int] = set()  # settled offsets above the watermark (held by an older one)
        self.position: int | None = None  # next offset to commit: one past the settled prefix
        self.committed: int | None = None  # the position last handed out by take_commits


class Ledger:
    """Every event consumed and not settled yet, by partition in offset order (the one index), and
    each partition's commit position: one past the longest settled prefix (contiguous low
    watermark). Offsets need not be contiguous (compaction, transaction markers)."""

    def __init__(self, on_settled: Callable[[Work], None] | None = None) -> None:
        self._parts: dict[TopicPartitionKey, _Partition] = {}
        self.on_settled = on_settled
        self.count = 0  # events held and not settled

    def add(self, work: Work) -> None:
        """Register a consumed event; offsets of a partition must arrive in increasing order."""
        part = self._parts.get(work.tp)
        if part is None:
            part = self._parts[work.tp] = _Partition()
        elif part.works and work.offset <= next(reversed(part.works)):
            raise ValueError(f"offset {work.offset} of {work.tp} added out of order")
        part.works[work.offset] = work
        self.count += 1

    def holds(self, work: Work) -> bool:
        """The event is still unsettled here (not settled, revoked or rewound meanwhile)."""
        part = self._parts.get(work.tp)
        return part is not None and part.works.get(work.offset) is work and work.offset not in part.done

    def settle(self, work: Work) -> bool:
        """The event is delivered; False (and nothing changes) if it is no longer held."""
        if not self.holds(work):
            return False
        part = self._parts[work.tp]
        part.done.add(work.offset)
        self.count -= 1
        works, done = part.works, part.done
        while works:
            offset = next(iter(works))
            if offset not in done:
                break
            works.popitem(last=False)
            done.discard(offset)
            part.position = offset + 1
        if self.on_settled is not None:
            self.on_settled(work)
        return True

    def oldest(self, tp: TopicPartitionKey) -> Work | None:
        """The oldest unsettled event of a partition (what holds its watermark)."""
        part = self._parts.get(tp)
        if part is None or not part.works:
            return None
        return next(iter(part.works.values()))

    def partitions(self) -> list[TopicPartitionKey]:
        return list(self._parts)

    def in_flight(self, tp: TopicPartitionKey) -> int:
        part = self._parts.get(tp)
        return len(part.works) - len(part.done) if part is not None else 0

    def take_commits(self, keys: Iterable[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Positions that moved since they were last taken (of ``keys``, default all), to commit."""
        out: dict[TopicPartitionKey, int] = {}
        for key in self._parts if keys is None else keys:
            part = self._parts.get(key)
            if part is not None and part.position is not None and part.position != part.committed:
                part.committed = out[key] = part.position
        return out

    def uncommitted(self, positions: dict[TopicPartitionKey, int]) -> None:
        """A commit of ``positions`` failed: hand them out again with the next :meth:`take_commits`."""
        for key, position in positions.items():
            part = self._parts.get(key)
            if part is not None and part.committed == position:
                part.committed = None

    def positions(self, keys: Iterable[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Current commit positions (moved or not) of ``keys`` (default: all)."""
        selected = self._parts if keys is None else keys
        return {k: p for k in selected if k in self._parts and (p := self._parts[k].position) is not None}

    def drop(self, keys: Iterable[TopicPartitionKey]) -> int:
        """Forget partitions: cancel their unsettled work, ignore its late completions. Returns how
        many events were dropped."""
        dropped = 0
        for key in list(keys):
            part = self._parts.pop(key, None)
            if part is None:
                continue
            for offset, work in part.works.items():
                if offset not in part.done:
                    work.cancel()
                    dropped += 1
        self.count -= dropped
        return dropped

    def drop_all(self) -> int:
        return self.drop(list(self._parts))
