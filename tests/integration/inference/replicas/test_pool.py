"""Replica pool and client against real HTTP simulators."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from streams.config import ReplicaSettings
from streams.devtools.broker import free_port
from streams.errors import ErrorType, PoisonError
from streams.inference.labeler import Labeler
from streams.inference.prompt import build_request
from streams.inference.replicas.client import ReplicaClient
from streams.inference.replicas.pool import ReplicaPool
from streams.policy.model import load_policies
from tests.integration.helpers import ROOT, safeguard

POLICIES = load_policies(ROOT / "policies")
MODEL = "openai/gpt-oss-safeguard-20b"


def body(text: str) -> dict:
    return build_request(POLICIES["spam"], text, model=MODEL, reasoning_effort="low")


async def test_least_outstanding_spreads_load(sims) -> None:
    urls = sims(2, time_scale=5.0).urls
    seen: dict[str, int] = {}

    def observe(replica: str, outcome: str, latency: float, inflight: int) -> None:
        seen[replica] = seen.get(replica, 0) + 1

    async with ReplicaPool(ReplicaSettings(urls=urls), observer=observe) as pool:
        results = await asyncio.gather(*(pool.chat(body(f"message {i}")) for i in range(60)))
    assert all(r.content for r in results)
    assert set(seen) == set(urls)
    assert min(seen.values()) >= 20  # neither replica was starved


async def test_dead_replica_is_retried_elsewhere_and_taken_out(sims) -> None:
    alive = sims(1).urls[0]
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here: connection refused
    async with ReplicaPool(ReplicaSettings(urls=[dead, alive]), backoff_base_s=0.01, backoff_max_s=0.05) as pool:
        results = await asyncio.gather(*(pool.chat(body(f"m{i}")) for i in range(30)))
        assert {r.replica for r in results} == {alive}
        assert pool.replica_states()[dead][0] is False
        assert pool.healthy_count == 1


async def test_inflight_cap_is_respected(sims) -> None:
    url = sims(1, time_scale=2.0).urls[0]
    peak = 0

    async with ReplicaPool(ReplicaSettings(urls=[url], max_inflight_per_replica=4)) as pool:
        async def one(i: int) -> None:
            nonlocal peak
            task = asyncio.ensure_future(pool.chat(body(f"x{i}")))
            await asyncio.sleep(0)
            peak = max(peak, pool.inflight)
            await task

        await asyncio.gather(*(one(i) for i in range(20)))
    assert peak == 4


async def test_waiting_counts_requests_queued_for_a_slot(sims) -> None:
    """What the pipeline's backpressure reads: requests queued here, not yet sent to a replica, and
    the slots the replicas have free."""
    url = sims(1, time_scale=2.0).urls[0]
    async with ReplicaPool(ReplicaSettings(urls=[url], max_inflight_per_replica=4)) as pool:
        tasks = [asyncio.ensure_future(pool.chat(body(f"w{i}"))) for i in range(20)]
        await asyncio.sleep(0)
        assert (pool.inflight, pool.waiting, pool.free_slots) == (4, 16, 0)
        await asyncio.gather(*tasks)
        assert (pool.inflight, pool.waiting, pool.free_slots, pool.answered) == (0, 0, 4, 20)


async def test_reasoning_content_fallback(sims) -> None:
    url = sims(1, extra_args=["--reasoning-field", "reasoning_content"]).urls[0]
    replicas = ReplicaSettings(urls=[url], model=MODEL, max_attempts=2)
    async with ReplicaPool(replicas) as pool:
        d = await Labeler(pool, replicas, default_effort="low").decide(POLICIES["spam"], "hi")
    assert d.reasoning and "simulated" in d.reasoning


def test_classify_cli(sims, answer_key) -> None:
    key = answer_key([{"text": "win a free phone at scam.example", "label": 1, "category": "SP2"}])
    url = sims(1, answer_key=key).urls[0]
    proc = safeguard("classify", "--policy", str(ROOT / "policies/spam.md"), "--text",
                     "win a free phone at scam.example", "--replica", url, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["violation"] is True and doc["category"] == "SP2" and doc["reasoning"]
    assert doc["policy_version"].startswith("1-")


def test_classify_cli_unreachable_replica_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = safeguard("classify", "--policy", str(ROOT / "policies/spam.md"), "--text", "hi", "--replica", url,
                     timeout=60)
    assert proc.returncode == 1
    assert "replica unavailable" in proc.stderr


async def _serve(handler) -> tuple[str, web.AppRunner]:
    """An OpenAI-shaped test server in this event loop: ``handler(body) -> (status, doc, headers)``."""
    async def completions(request: web.Request) -> web.Response:
        status, doc, headers = handler(await request.json())
        return web.json_response(doc, status=status, headers=headers)

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/v1", runner


def _answer(content: str = '{"violation": 0, "policy_category": null}') -> dict:
    return {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2}}


async def test_a_retry_after_of_an_hour_parks_nothing_and_the_other_replica_serves(sims) -> None:
    throttled: list[dict] = []

    def throttle(body: dict) -> tuple[int, dict, dict]:
        throttled.append(body)
        return 429, {"error": {"message": "slow down"}}, {"Retry-After": "3600"}

    url, runner = await _serve(throttle)
    alive = sims(1).urls[0]
    try:
        async with ReplicaPool(ReplicaSettings(urls=[url, alive])) as pool:
            results = await asyncio.wait_for(asyncio.gather(*(pool.chat(body(f"m{i}")) for i in range(20))), 60)
        assert {r.replica for r in results} == {alive}
        assert 1 <= len(throttled) < 20  # it was tried, then left alone for its pause
    finally:
        await runner.cleanup()


async def test_the_retry_after_pause_is_capped_and_the_replica_serves_again() -> None:
    calls: list[int] = []

    def once(body: dict) -> tuple[int, dict, dict]:
        calls.append(1)
        if len(calls) == 1:
            return 429, {"error": {"message": "busy"}}, {"Retry-After": "3600"}
        return 200, _answer(), {}

    url, runner = await _serve(once)
    try:
        async with ReplicaPool(ReplicaSettings(urls=[url], retry_after_max_s=0.3, adaptive_concurrency=False)) as pool:
            result = await asyncio.wait_for(pool.chat(body("hello")), 30)
        assert result.content is not None and len(calls) == 2
    finally:
        await runner.cleanup()


async def test_structured_output_falls_back_only_when_the_server_rejects_response_format() -> None:
    seen: list[dict] = []

    def context_limited(body: dict) -> tuple[int, dict, dict]:
        seen.append(body)
        if len(body["messages"][-1]["content"]) > 1000:
            return 400, {"error": {"message": "This model's maximum context length is 131072 tokens. However, "
                                              "you requested 250000 tokens."}}, {}
        return 200, _answer(), {}

    def no_guided_decoding(body: dict) -> tuple[int, dict, dict]:
        seen.append(body)
        if "response_format" in body:
            return 400, {"error": {"message": "response_format json_schema is not supported by this server"}}, {}
        return 200, _answer(), {}

    structured = build_request(POLICIES["spam"], "x", model=MODEL, reasoning_effort="low", structured_output=True)
    url, runner = await _serve(context_limited)
    try:
        client = ReplicaClient(url, api_key=None, timeout_s=10)
        too_long = {**structured, "messages": [structured["messages"][0], {"role": "user", "content": "y" * 5000}]}
        with pytest.raises(PoisonError) as rejected:
            await client.chat(too_long)
        assert rejected.value.error_type == ErrorType.REQUEST_REJECTED and "context length" in str(rejected.value)
        await client.chat(structured)
        assert "response_format" in seen[-1]  # a prompt that was too long does not switch it off
        client.close()
    finally:
        await runner.cleanup()
    seen.clear()
    url, runner = await _serve(no_guided_decoding)
    try:
        client = ReplicaClient(url, api_key=None, timeout_s=10)
        assert (await client.chat(structured)).content is not None
        await client.chat(structured)
        assert ["response_format" in b for b in seen] == [True, False, False]  # rejected once, then plain
        client.close()
    finally:
        await runner.cleanup()


async def test_classify_prints_what_the_model_wrote_literally() -> None:
    """Model text is data: a rationale holding rich markup ("[/red]") is printed as written, not
    parsed (an unmatched closing tag used to crash the command)."""
    rationale = "closing [/red] tag and [bold]markup"

    def answer(body: dict) -> tuple[int, dict, dict]:
        return 200, _answer(json.dumps({"violation": 1, "policy_category": "[SP2]", "rationale": rationale})), {}

    url, runner = await _serve(answer)
    try:
        proc = await asyncio.to_thread(safeguard, "classify", "--policy", str(ROOT / "policies/spam.md"),
                                       "--text", "x", "--replica", url)
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert rationale in proc.stdout and "category=[SP2]" in proc.stdout
