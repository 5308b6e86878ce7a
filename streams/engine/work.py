"""One consumed event on its way through the stages, and what they attach to it.

A :class:`Work` is made when a record is consumed and lives until its outputs are acknowledged (or
committed in a transaction). Stages fill it in order: ``event`` and ``content`` (decode), the
``requests`` still to decide (route), ``outcomes`` as they are decided (prefilter, dedupe cache,
inference), then ``records`` (outputs). Delivery only ever reads ``tp``, ``offset``, ``key`` and
``records``, so a stage added in between never touches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.errors import PoisonError
from streams.inference.labeler import Outcome
from streams.policy.model import Policy
from streams.wire.events import ContentEvent

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to produce for an event, and the metric to count once it is acknowledged."""

    topic: str
    value: bytes
    count: Callable[[], None] | None = None
    key: bytes | None = None  # None: the event's key (every record but Coop requests, keyed by their own id)


@dataclass(eq=False, slots=True)
class Request:
    """A decision still to make for an event: one policy, or several in one prompt (combined mode)."""

    policies: list[Policy]
    cache_key: bytes | None = None  # set by the dedupe stage on a miss


@dataclass(eq=False, slots=True)
class Work:
    """One consumed event and everything the stages know about it so far."""

    tp: TopicPartitionKey
    offset: int
    key: bytes | None
    value: bytes | None
    consumed_at: float  # time.monotonic() when consumed
    event: ContentEvent | None = None
    content: str = ""  # the user message the model reads (chats as a transcript)
    failure: PoisonError | None = None  # the event itself is unusable: one dead letter, no labels
    deferred: str | None = None  # a stage could not go on for an outage (the Schema Registry): it waits
    requests: list[Request] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    pending: int = 0  # requests running on the replicas
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    records: list[OutRecord] = field(default_factory=list)
    # From the prefilter stage: policy id -> (score, audited, evasion flags, novel text, the controller the
    # pair's end is reported to); and the text it scored.
    prefilter: dict[str, tuple[float, bool, tuple[str, ...], bool, Any]] | None = None
    normalised: tuple[str, tuple[str, ...]] | None = None
    timestamp: float | None = None  # the record's timestamp, seconds since the epoch (decision latency)
    provisional: Any = None  # the provisional view (streams.interventions.provisional), where one is due
    deadline: float | None = None  # when its deadline decision is due (wall clock), once tracked
    priority: int = 1  # its lane: the route's priority, 0 when its provisional action is urgent
    deadline_sent: bool = False

    @property
    def topic(self) -> str:
        return self.tp[0]

    @property
    def partition(self) -> int:
        return self.tp[1]

    @property
    def open(self) -> bool:
        """Still has something to decide (neither failed, nor waiting, nor fully decided)."""
        return self.failure is None and self.deferred is None and bool(self.requests)

    @property
    def lane(self) -> tuple[int, float]:
        """The order events wait for a replica slot in: (priority, record time)."""
        return self.priority, self.timestamp if self.timestamp is not None else 0.0

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
