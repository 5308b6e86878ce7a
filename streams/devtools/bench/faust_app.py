"""``faust``: the same job as an idiomatic faust-streaming agent (benchmark peer, no handicaps).

``stream.take(500, within=1.0)``, every HTTP call of the batch concurrently with
``asyncio.gather`` over one aiohttp session without a connection cap, labels sent with
``topic.send``; with several replicas the requests go round-robin over them. Configured by
environment (BENCH_BOOTSTRAP, BENCH_IN, BENCH_OUT, BENCH_URLS comma-separated, BENCH_MODEL, BENCH_APP,
BENCH_DATADIR). Run with ``faust -A streams.devtools.bench.faust_app worker --without-web``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import aiohttp
import faust
import orjson

from streams.devtools.bench.ideal import load_policy_cached
from streams.inference.prompt import build_request

app = faust.App(os.environ.get("BENCH_APP", "safeguard-bench"), broker="kafka://" + os.environ.get(
    "BENCH_BOOTSTRAP", "localhost:9092"), store="memory://", web_enabled=False, topic_replication_factor=1,
    consumer_auto_offset_reset="earliest", datadir=os.environ.get("BENCH_DATADIR", "faust-data"))
source = app.topic(os.environ.get("BENCH_IN", "bench.in"), value_serializer="raw")
sink = app.topic(os.environ.get("BENCH_OUT", "bench.out"), value_serializer="raw")
URLS = itertools.cycle(os.environ.get("BENCH_URLS", "http://localhost:8000/v1").split(","))
MODEL = os.environ.get("BENCH_MODEL", "openai/gpt-oss-safeguard-20b")
_session: list[aiohttp.ClientSession] = []


async def classify(session: aiohttp.ClientSession, raw: bytes) -> bytes:
    event = orjson.loads(raw)
    body = orjson.dumps(build_request(load_policy_cached(), event["text"], model=MODEL, reasoning_effort="low"))
    async with session.post(next(URLS) + "/chat/completions", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        answer: Any = orjson.loads(await resp.read())
    return orjson.dumps({"event_id": event["event_id"], "answer": answer["choices"][0]["message"]["content"]})


@app.agent(source)
async def label(stream: Any) -> None:
    if not _session:
        _session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    async for batch in stream.take(500, within=1.0):
        results = await asyncio.gather(*(classify(_session[0], v) for v in batch))
        for value in results:
            await sink.send(value=value)
