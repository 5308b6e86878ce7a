"""The real server answers a chat completion the way the consumer expects to read it."""

from __future__ import annotations

import json
import urllib.request

import pytest

from streams.devtools.vllm_engine import VllmEngine

pytestmark = pytest.mark.timeout(900)  # the first start on a busy machine includes loading torch


def test_a_chat_completion_comes_from_vllm_0_32(llama_engine: VllmEngine) -> None:
    body = {"model": llama_engine.model, "max_tokens": 8,
            "messages": [{"role": "system", "content": "Policy: no spam."}, {"role": "user", "content": "hello"}]}
    request = urllib.request.Request(f"{llama_engine.url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - the engine's loopback URL
        status, doc = response.status, json.load(response)
    assert status == 200, doc
    assert doc["system_fingerprint"].startswith(f"vllm-{llama_engine.version}"), doc
    assert doc["model"] == llama_engine.model
    assert doc["choices"][0]["finish_reason"] in ("length", "stop")
    assert doc["usage"]["completion_tokens"] >= 1
