"""The lifecycle the long-running commands share (``safeguard run``, ``safeguard escalate``).

Each command keeps one :class:`contextlib.AsyncExitStack` for everything it starts: :func:`serving`
(the health server, SIGTERM/SIGINT handlers) and the :func:`background` tasks it owns. Leaving the
stack undoes them in reverse order, whatever raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from streams.ops.health import health_app, start_health_server

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.asynccontextmanager
async def serving(stop: Callable[[], None], *, port: int, registry: CollectorRegistry,
                  ready: Callable[[], bool]) -> AsyncIterator[None]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (none when 0) and call ``stop``
    on SIGTERM/SIGINT; on exit, the default signal handling comes back and the server closes."""
    async with contextlib.AsyncExitStack() as stack:
        if port:
            runner = await start_health_server(health_app(registry, ready), port)
            stack.push_async_callback(runner.cleanup)
        stack.enter_context(_stop_on_signals(stop))
        yield


def _stopping(sig: signal.Signals, stop: Callable[[], None]) -> None:
    log.info("%s: stopping (what is in flight finishes and is committed first)", sig.name)
    stop()


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        # Not on Windows' loop, nor outside the main thread (an embedder's loop): no handler then.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, functools.partial(_stopping, sig, stop))
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


def background(stack: contextlib.AsyncExitStack, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``coro`` as a task owned by ``stack``: cancelled and awaited when the stack closes."""
    task = asyncio.create_task(coro)
    stack.push_async_callback(_cancel, task)
    return task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
