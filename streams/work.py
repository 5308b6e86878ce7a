"""One consumed event on its way through the pipeline, and the records it will produce."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class OutRecord:
    """A record to produce for an event, and the metric to count once it is acknowledged."""

    topic: str
    value: bytes
    count: Callable[[], None] | None = None


@dataclass(eq=False)
class Work:
    """An event from consumption until its outputs are acknowledged (or committed in a transaction).

    ``pending`` counts inference requests still running; when it reaches zero every output record
    is in ``records`` and the delivery strategy takes over.
    """

    key: TopicPartitionKey
    offset: int
    started: float
    msg_key: bytes | None
    pending: int
    records: list[OutRecord] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    unacked: int = 0
    ready: bool = False

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
