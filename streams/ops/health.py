"""Metrics and health endpoints on ``metrics.port``: ``/metrics``, ``/healthz``, ``/readyz``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def health_app(registry: CollectorRegistry, ready: Callable[[], bool]) -> web.Application:
    """``/healthz``: the process is serving. ``/readyz``: partitions assigned (or idle-ready) and at
    least one healthy replica; 503 otherwise so Kubernetes stops routing and alerts fire."""

    async def metrics(_r: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_r: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_r: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_health_server(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
