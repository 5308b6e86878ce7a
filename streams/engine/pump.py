"""The report pump: delivery reports served on the event loop, and replica I/O handled in batches.

Quiet: delivery reports every ``ACK_POLL_S``. Busy (at least ``IO_BATCH_MIN_INFLIGHT`` replica
requests out): the loop sleeps ``batching.io_batch_ms`` and then handles every response that arrived
meanwhile in one turn. Without this the loop wakes once per response, and a wake-up costs more CPU
than the response's own processing (docs/performance.md); the price is at most that long on a label
that took seconds. Nothing waits on the loop meanwhile: sockets buffer, heartbeats run on
librdkafka's threads. The adaptive in-flight limit keeps a short queue at each replica that covers
the pause (:mod:`streams.inference.replicas.adaptive`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streams.engine.delivery import Delivery

ACK_POLL_S = 0.05  # how often delivery reports are served when not batching I/O
IO_BATCH_MIN_INFLIGHT = 32  # batch I/O only when this many requests are out (latency first when quiet)


async def serve_reports(delivery: Delivery, inflight: Callable[[], int], batch_s: float) -> None:
    """Run until cancelled (see the module doc). ``inflight()``: replica requests out now."""
    while True:
        if delivery.awaiting_acks():
            delivery.serve_acks()
        if batch_s and inflight() >= IO_BATCH_MIN_INFLIGHT:
            time.sleep(batch_s)  # deliberate: the whole loop waits, see above
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # and the tasks those responses woke run before the next wait
        else:
            await asyncio.sleep(ACK_POLL_S)
