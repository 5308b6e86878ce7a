"""The simulator's answers where the real vLLM 0.32 server was measured (docs/development.md, "The
simulator checked against the engine"; tests/engine/test_server.py checks them against the engine):
priority is validated as pydantic's lax integer and then ignored without --scheduling-policy priority;
prompt + max_tokens over the context is clamped (200, finish_reason length); the 400s carry vLLM's error
shape, worded as the model's chat path (Harmony for gpt-oss, the default; a chat template otherwise)
words them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from streams.devtools.sim.server import SimConfig, SimServer, estimate_tokens
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


def test_the_400s_carry_vllms_error_shape_on_the_harmony_path() -> None:
    status, doc = ask(chat("word " * 3000))  # the prompt alone is over the context
    assert status == 400 and set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["param"] is None and doc["error"]["type"] == "BadRequestError"
    assert "exceeds model's maximum context length (2048)" in doc["error"]["message"]
    status, doc = ask(chat(max_tokens=5000))  # Harmony clamps max_tokens over the context too
    assert status == 200 and doc["choices"][0]["finish_reason"] in ("stop", "length")
    status, doc = ask(chat(reasoning_effort="minimal"))
    assert status == 400 and doc["error"]["param"] == "reasoning_effort" and "Harmony" in doc["error"]["message"]


def test_the_400s_carry_vllms_error_shape_on_the_template_path() -> None:
    status, doc = ask(chat("word " * 3000), chat_format="template")
    assert status == 400 and set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["param"] == "input_tokens" and "maximum context length is 2048" in doc["error"]["message"]
    assert "at least 2049 input tokens" in doc["error"]["message"]  # vLLM stops counting there
    status, doc = ask(chat(max_tokens=5000), chat_format="template")
    assert status == 400 and doc["error"]["param"] == "max_tokens"
    assert "cannot be greater than max_model_len=2048" in doc["error"]["message"]
    assert ask(chat(reasoning_effort="minimal", max_tokens=4), chat_format="template")[0] == 200


def test_a_prompt_filling_the_context_leaves_nothing_to_generate() -> None:
    # 2048 - 64 (Harmony's overhead) - 3 (the policy) tokens of user text, at 4 characters a token
    for chat_format in ("harmony", "template"):
        status, doc = ask(chat("abcd" * (2048 - 64 - estimate_tokens(POLICY))), chat_format=chat_format)
        assert status == 400 and doc["error"]["param"] == "max_tokens", doc
        assert doc["error"]["message"].startswith("max_tokens must be at least 1, got 0.")


def test_integers_are_read_the_way_pydantic_reads_them() -> None:
    for value in (1, 1.0, "1", " 1", "1.0", True):
        assert ask(chat(priority=value, max_tokens=4))[0] == 200, value
    for value, kind in (("high", "int_parsing"), (1.5, "int_from_float"), (None, "int_type"), ([1], "int_type")):
        status, doc = ask(chat(priority=value))
        assert status == 400 and doc["error"]["type"] == "Bad Request", value
        assert doc["error"]["param"] == "body.priority" and f"'type': '{kind}'" in doc["error"]["message"]
    status, doc = ask(chat(max_tokens=0))
    assert status == 400 and doc["error"]["param"] == "max_tokens" and "got 0" in doc["error"]["message"]


def test_a_request_without_a_model_gets_the_served_one() -> None:
    body = chat(max_tokens=4)
    del body["model"]
    status, doc = ask(body)
    assert status == 200 and doc["model"] == "m"
    status, doc = ask(chat(model="other"))
    assert status == 404 and doc["error"]["param"] == "model"


def test_ignore_eos_generates_up_to_max_tokens() -> None:
    status, doc = ask(chat(max_tokens=1500, ignore_eos=True, reasoning_effort="low"))
    assert status == 200 and doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 1500


def test_a_json_schema_shapes_the_answer_and_a_bad_one_is_refused() -> None:
    schema = {"type": "object", "properties": {"violation": {"type": "integer", "enum": [0, 1]},
                                               "policy_category": {"type": ["string", "null"], "maxLength": 3}},
              "required": ["violation", "policy_category"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}}
    status, doc = ask(chat("buy now", response_format=fmt))
    assert status == 200 and set(orjson.loads(doc["choices"][0]["message"]["content"])) == set(schema["properties"])
    bogus = {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "bogus"}}}
    assert ask(chat(response_format=bogus))[1]["error"]["message"] == "Invalid structural tag specification."
    status, doc = ask(chat(response_format=bogus), chat_format="template")
    assert status == 400 and "Failed to transform json schema into a grammar" in doc["error"]["message"]


def test_every_field_vllm_sends_is_there() -> None:
    status, doc = ask(chat(max_tokens=4))
    assert status == 200
    assert {"service_tier", "system_fingerprint", "prompt_token_ids", "kv_transfer_params", "metrics"} <= set(doc)
    assert {"refusal", "annotations", "audio", "function_call", "reasoning"} <= set(doc["choices"][0]["message"])
    assert "tool_calls" not in doc["choices"][0]["message"]
    assert doc["usage"]["prompt_tokens_details"] is None  # vLLM needs --enable-prompt-tokens-details for it
    assert set(doc["usage"]["completion_tokens_details"]) == {"reasoning_tokens"}
    assert ask(chat(max_tokens=4), chat_format="template")[1]["usage"]["completion_tokens_details"] is None
