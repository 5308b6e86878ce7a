"""The simulator's answers where the real vLLM 0.32 server was measured to differ from what we had
read (docs/development.md, "The simulator checked against the engine"): priority is validated and
then ignored without --scheduling-policy priority; prompt + max_tokens over the context is clamped
(200, finish_reason length), only a prompt alone over it or max_tokens over max_model_len is a 400
with vLLM's error shape."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from streams.devtools.sim.server import SimConfig, SimServer
from streams.ops.profiles import PROFILES

PROFILE = replace(PROFILES["gpt-oss-safeguard-20b@h100"], max_model_len=2048)
POLICY = 'Answer with JSON {"violation": 0 or 1, "policy_category": null}.'


def ask(body: dict[str, Any], **config: Any) -> tuple[int, dict[str, Any]]:
    async def main() -> tuple[int, dict[str, Any]]:
        server = SimServer(SimConfig(profile=PROFILE, model="m", time_scale=1000.0, **config))
        async with TestClient(TestServer(server.app())) as client:
            resp = await client.post("/v1/chat/completions", data=orjson.dumps(body))
            return resp.status, orjson.loads(await resp.read())
    return asyncio.run(main())


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": POLICY}, {"role": "user", "content": content}],
            **extra}


def test_priority_is_validated_as_an_integer_then_accepted_under_either_policy() -> None:
    for policy in ("fcfs", "priority"):
        assert ask(chat(priority=-1), scheduling_policy=policy)[0] == 200
        status, doc = ask(chat(priority="high"), scheduling_policy=policy)
        assert status == 400 and doc["error"]["param"] == "body.priority" and doc["error"]["code"] == 400


def test_prompt_plus_max_tokens_over_the_context_is_clamped_not_refused() -> None:
    status, doc = ask(chat("word " * 1560, max_tokens=2000))  # about 2034 prompt tokens
    assert status == 200
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
    assert doc["usage"]["prompt_tokens"] + doc["usage"]["completion_tokens"] == 2048  # clamped to the context


def test_a_small_max_tokens_cuts_the_generation() -> None:
    status, doc = ask(chat(max_tokens=5))
    assert status == 200 and doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 5


def test_the_400s_carry_vllms_error_shape() -> None:
    status, doc = ask(chat("word " * 3000))  # the prompt alone is over the context
    assert status == 400 and set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["param"] == "input_tokens" and "maximum context length is 2048" in doc["error"]["message"]
    status, doc = ask(chat(max_tokens=5000))
    assert status == 400 and doc["error"]["param"] == "max_tokens"
    assert "cannot be greater than max_model_len=2048" in doc["error"]["message"]
