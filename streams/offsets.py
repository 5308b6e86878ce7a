"""Per-partition offset tracking with out-of-order completion, pure and clock-free.

Events finish in any order (inference latencies vary by 10x), but a committed offset promises that
everything before it is done. Each partition keeps its consumed offsets in arrival order (Kafka
delivers a partition in offset order) and a set of finished ones; the commit position is one past
the longest finished prefix: the contiguous low watermark. A gap (one slow or retrying event) holds
the watermark, never skips it, so a crash re-delivers that event and everything after it
(duplicates, never a gap).
"""

from __future__ import annotations

from collections import deque

TopicPartitionKey = tuple[str, int]


class PartitionOffsets:
    """Offsets of one partition that were consumed and not yet committed."""

    __slots__ = ("_pending", "_done", "_position", "_committed")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._position: int | None = None  # next offset to commit (last contiguous done + 1)
        self._committed: int | None = None

    def add(self, offset: int) -> None:
        """Register a consumed offset (must be larger than every offset added before)."""
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} added out of order after {self._pending[-1]}")
        self._pending.append(offset)

    def complete(self, offset: int) -> bool:
        """Mark an offset done; returns True when the commit position advanced."""
        self._done.add(offset)
        advanced = False
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            head = pending.popleft()
            done.discard(head)
            self._position = head + 1
            advanced = True
        return advanced

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def position(self) -> int | None:
        return self._position

    def take_commit(self) -> int | None:
        """The position to commit if it moved since the last call, else None."""
        if self._position is not None and self._position != self._committed:
            self._committed = self._position
            return self._position
        return None


class OffsetTracker:
    """All assigned partitions of one consumer."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartitionKey, PartitionOffsets] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = PartitionOffsets()
        part.add(offset)

    def complete(self, topic: str, partition: int, offset: int) -> bool:
        """Mark done. Unknown partitions (revoked meanwhile) are ignored and return False."""
        part = self._parts.get((topic, partition))
        return part.complete(offset) if part is not None else False

    def take_commits(self) -> dict[TopicPartitionKey, int]:
        """Positions that moved since the last call, to commit."""
        out: dict[TopicPartitionKey, int] = {}
        for key, part in self._parts.items():
            pos = part.take_commit()
            if pos is not None:
                out[key] = pos
        return out

    def positions(self, keys: list[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Current commit positions (moved or not) of the given partitions (default: all)."""
        selected = self._parts.keys() if keys is None else [k for k in keys if k in self._parts]
        return {k: p for k in selected if (p := self._parts[k].position) is not None}

    def in_flight(self, key: TopicPartitionKey | None = None) -> int:
        if key is not None:
            part = self._parts.get(key)
            return part.in_flight if part else 0
        return sum(p.in_flight for p in self._parts.values())

    def drop(self, keys: list[TopicPartitionKey]) -> None:
        """Forget partitions (revoked): late completions for them are ignored."""
        for key in keys:
            self._parts.pop(key, None)
