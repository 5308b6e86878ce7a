"""The commit gate: offsets are committed between labels, never in the middle of one.

Under exactly-once, faust commits a partition's offsets in the transaction that holds the records
sent for it, from a timer task that runs beside the agents. A commit landing between a label's
writes and its acknowledgement would commit the writes without the offset (a duplicate after a
crash) or the offset without a write still to come (a loss). Each label's writes and its ack are
one *step*; steps run side by side (the two agents, concurrently), a commit runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class CommitGate:
    """Steps share the gate; a commit waits for the steps under way, holds new ones back meanwhile
    (so a steady stream of labels cannot starve it), and runs alone."""

    def __init__(self) -> None:
        self._steps = 0
        self._committing = False
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._committing)
            self._steps += 1
        try:
            yield
        finally:
            async with self._changed:
                self._steps -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def commit(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._committing)
            self._committing = True
            await self._changed.wait_for(lambda: self._steps == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._committing = False
                self._changed.notify_all()
