"""The simulator answers like vLLM over real HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from streams.devtools.bench.probes import prefix_cache_tokens
from streams.inference.replicas.client import sum_samples
from streams.policy.model import load_policies
from tests.integration.helpers import ROOT

POLICIES = load_policies(ROOT / "policies")
MODEL = "openai/gpt-oss-safeguard-20b"


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def chat(policy: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "reasoning_effort": "low", **extra,
            "messages": [{"role": "system", "content": POLICIES[policy].body}, {"role": "user", "content": content}]}


def test_chat_completion_has_vllm_shape(sims, answer_key) -> None:
    key = answer_key([{"text": "totally fake review", "label": 1, "category": "FR2"}])
    url = sims(1, answer_key=key).urls[0]
    status, doc = post(url, chat("fake-reviews", "totally fake review"))
    assert status == 200
    assert doc["object"] == "chat.completion" and doc["model"] == MODEL and doc["id"].startswith("chatcmpl-")
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "stop"
    msg = choice["message"]
    assert msg["role"] == "assistant"
    assert "simulated" in msg["reasoning"]
    verdict = json.loads(msg["content"])
    assert verdict["violation"] == 1 and verdict["policy_category"] == "FR2"
    usage = doc["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_verdict_from_policy_examples_then_default(sims) -> None:
    url = sims(1).urls[0]
    _, doc = post(url, chat("spam", "Send 0.1 BTC to this wallet and get 0.2 BTC back within an hour, guaranteed."))
    assert json.loads(doc["choices"][0]["message"]["content"])["violation"] == 1
    _, doc = post(url, chat("spam", "What a nice afternoon."))
    assert json.loads(doc["choices"][0]["message"]["content"])["violation"] == 0


def test_binary_policy_gets_binary_answer(sims, answer_key) -> None:
    key = answer_key([{"text": "bad thing", "label": 1}])
    url = sims(1, answer_key=key).urls[0]
    policy = "# Binary (policy bin)\nReturn exactly one character: 0 or 1."
    body = {"model": MODEL,
            "messages": [{"role": "system", "content": policy}, {"role": "user", "content": "bad thing"}]}
    _, doc = post(url, body)
    assert doc["choices"][0]["message"]["content"] == "1"


def test_older_vllm_reasoning_field(sims) -> None:
    url = sims(1, extra_args=["--reasoning-field", "reasoning_content"]).urls[0]
    _, doc = post(url, chat("spam", "hello"))
    msg = doc["choices"][0]["message"]
    assert "reasoning" not in msg and msg["reasoning_content"]


def test_errors_look_like_vllm(sims) -> None:
    url = sims(1).urls[0]
    status, doc = post(url, {**chat("spam", "x"), "model": "nope"})
    assert status == 404 and "does not exist" in doc["error"]["message"]
    status, doc = post(url, {"model": MODEL})  # no messages: the request model's validation (pydantic)
    assert status == 400 and doc["error"]["type"] == "Bad Request" and doc["error"]["param"] == "body.messages"


def test_models_and_metrics(sims) -> None:
    url = sims(1).urls[0]
    models = json.loads(get(url + "/models"))
    assert models["data"][0]["id"] == MODEL
    for _ in range(3):
        post(url, chat("spam", "hello there"))
    text = get(url.removesuffix("/v1") + "/metrics")
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total", "vllm:e2e_request_latency_seconds_bucket"):
        assert name in text, name
    hits = next(line for line in text.splitlines() if line.startswith("vllm:prefix_cache_hits_total"))
    assert float(hits.split()[-1]) > 0  # the shared policy prefix was cached after the first request
    cached, queried = prefix_cache_tokens([url])  # what the bench reports as the prefix-cache hit rate
    assert cached == float(hits.split()[-1]) and 0 < cached < queried
    assert 'vllm:e2e_request_latency_seconds_count{engine="0",model_name="openai/gpt-oss-safeguard-20b"} 3.0' in text


@pytest.mark.parametrize("flag,check", [
    ("--truncate-rate", lambda s, d: s == 200 and d["choices"][0]["message"]["content"] is None
     and d["choices"][0]["finish_reason"] == "length"),
    ("--error-rate", lambda s, d: s == 500),
    ("--malformed-rate", lambda s, d: s == 200 and "violation" not in d["choices"][0]["message"]["content"]),
])
def test_fault_flags(sims, flag, check) -> None:
    url = sims(1, extra_args=[flag, "1.0"]).urls[0]
    status, doc = post(url, chat("spam", "hello"))
    assert check(status, doc)


def test_a_client_that_gives_up_aborts_its_request(sims) -> None:
    """As on vLLM: the connection closes, the server aborts the generation and frees its slot (aiohttp
    no longer cancels a handler when its client goes away unless asked to)."""
    url = sims(1, time_scale=0.05).urls[0]  # twenty times slower than the GPU: 1000 tokens take a minute
    metrics = url.removesuffix("/v1") + "/metrics"
    names = ("vllm:num_requests_running", "vllm:request_success_total", "vllm:generation_tokens_total")
    body = json.dumps(chat("spam", "hello", max_tokens=1000, ignore_eos=True)).encode()
    request = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(OSError):  # the client's read timeout
        urllib.request.urlopen(request, timeout=1.0)  # noqa: S310 - the simulator's loopback URL
    deadline = time.monotonic() + 20  # a bound: the generation itself would run for a minute
    while (state := sum_samples(get(metrics), *names))["vllm:num_requests_running"] > 0:
        assert time.monotonic() < deadline, f"the abandoned request still runs: {state}"
        time.sleep(0.05)
    assert state["vllm:request_success_total"] == 0  # aborted, not finished
    assert 0 < state["vllm:generation_tokens_total"] < 1000
