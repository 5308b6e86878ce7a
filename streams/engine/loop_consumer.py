"""The Kafka consumer as the event loop uses it, and the rebalance callbacks' hand-off to the loop.

confluent-kafka (2.16 on) serialises calls into one ``Consumer`` across threads: a call from another
thread waits until the thread inside ``consume()`` (or ``close()``) returns, and that thread does not
return while a rebalance callback runs. The pipeline's callbacks wait for the loop to do its part of
the rebalance (commit what is settled, drop the rest), so a consumer call the loop made meanwhile
(``commit``, ``consumer_group_metadata``, ``seek``) would wait for the very callback that waits for
the loop, until the callback's bound broke the circle with nothing committed in time.

:class:`LoopConsumer` breaks it: while a callback waits (:meth:`LoopConsumer.run_on_loop`), the
loop's consumer calls are queued to the consumer thread, which carries them out (a call from inside a
callback, on the thread that holds the consumer, is admitted at once) and hands back the result or
the exception. Outside callbacks the loop calls the consumer directly: it only does so between two
``consume()`` calls, when no other thread is inside the consumer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "concurrent.futures.Future[Any]"]


class LoopConsumer:
    """Wraps a confluent-kafka ``Consumer`` (or a test double with its methods): every method of the
    consumer, callable from the loop thread at any time."""

    def __init__(self, consumer: Any) -> None:
        self.raw = consumer
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[_Call | None] | None = None  # set while a callback waits for the loop
        self._owner: int | None = None  # that callback's thread

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                calls = self._calls if threading.get_ident() != self._owner else None
                if calls is not None:
                    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
                    calls.put((attr, args, kwargs, done))
            if calls is None:
                return attr(*args, **kwargs)
            return done.result()

        return call

    def run_on_loop(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop,
                    timeout_s: float) -> bool:
        """From a rebalance callback (the consumer thread): run ``coro`` on ``loop`` and carry out its
        consumer calls here until it is done. False if it did not finish within ``timeout_s`` (it goes
        on; its later calls are made directly, and wait for ``consume()`` to return). An exception
        ``coro`` raised is raised here."""
        calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        with self._lock:  # before the coroutine starts: none of its calls may go to the consumer directly
            self._calls, self._owner = calls, threading.get_ident()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            future.add_done_callback(lambda _: calls.put(None))
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    item = calls.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    return False
                if item is None:  # the coroutine is done
                    break
                _serve(item)
        finally:
            with self._lock:
                self._calls = self._owner = None
            _drain(calls)  # calls queued just before the hand-off ended
        future.result()
        return True


def _drain(calls: queue.SimpleQueue[_Call | None]) -> None:
    while True:
        try:
            item = calls.get_nowait()
        except queue.Empty:
            return
        if item is not None:
            _serve(item)


def _serve(item: _Call) -> None:
    fn, args, kwargs, done = item
    if not done.set_running_or_notify_cancel():
        return
    try:
        done.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed back to the caller on the loop
        done.set_exception(exc)
