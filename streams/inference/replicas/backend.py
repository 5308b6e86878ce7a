"""The two seams around the replica pool (docs/architecture.md, "Seams").

- :class:`Backend` is what the pool needs of one replica: a chat completion, ``/health``, the queue
  gauges for the adaptive limit, and ``close``. :class:`~streams.inference.replicas.client.ReplicaClient`
  (vLLM's OpenAI-compatible HTTP API) is the production one; the pool takes a ``ClientFactory`` so
  tests drive its retry, health and Retry-After logic over a fake, and another transport (a gRPC
  front end, an in-process engine) needs no change to the pool. The httpx habit: the transport is
  a parameter, the policy around it is not.
- :class:`Capacity` is what the event path reads of the pool to decide how much to poll and when
  to pause: nothing about HTTP, URLs or retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from streams.inference.replicas.client import ChatResult, QueueState


class Backend(Protocol):
    """One replica, as the pool uses it."""

    base_url: str

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        """One chat completion. Raises ``RetryableError`` (the pool retries elsewhere, honouring its
        ``retry_after``) or ``PoisonError`` (this request can never succeed)."""
        ...

    async def health(self, timeout_s: float = 2.0) -> bool:
        """True once the replica serves again (probed while it is out of rotation)."""
        ...

    async def queue_state(self, timeout_s: float = 2.0) -> QueueState | None:
        """The replica's waiting and running requests; None when it does not say. Raises
        ``RetryableError`` when it cannot be reached at all."""
        ...

    def close(self) -> None: ...


ClientFactory = Callable[[str], Backend]  # a replica's base URL -> its backend


class Capacity(Protocol):
    """What the pipeline reads of the replicas to pace itself."""

    @property
    def healthy_count(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    @property
    def free_slots(self) -> int: ...

    @property
    def waiting(self) -> int: ...
