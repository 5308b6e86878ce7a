"""The shared service lifecycle: health server, stop on SIGTERM/SIGINT, owned background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from streams.ops.service import background, serving


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """Leaving ``serving`` restores the default handlers; give the test process its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_asks_to_stop_and_the_health_server_answers_until_exit(signal_handlers: None) -> None:
    stop = asyncio.Event()
    port = free_port()
    async with serving(stop.set, port=port, registry=CollectorRegistry(), ready=lambda: False):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # no handler left pointing at a finished service
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # the server's port is free again


async def test_background_tasks_are_cancelled_and_awaited_when_the_stack_closes() -> None:
    stopped: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(name)

    async with contextlib.AsyncExitStack() as stack:
        tasks = [background(stack, forever("watcher")), background(stack, forever("reader"))]
        await asyncio.sleep(0)
    assert sorted(stopped) == ["reader", "watcher"] and all(t.cancelled() for t in tasks)
