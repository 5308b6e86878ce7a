"""vLLM 0.32's OpenAI-compatible chat API as the real server answers it: request checks, error bodies,
response shapes, and the engine metrics ``/metrics`` exports. Each rule was seen on the real engine
(docs/development.md, "The simulator checked against the engine"); ``tests/engine/test_server.py``
fails when the two drift apart.

The checks run in vLLM's order: the request model's field types first (pydantic in lax mode: ``"1"``,
``1.0`` and ``true`` are integers; a failure is a 400 typed ``Bad Request`` with ``param``
``body.<field>``), then the model name (404), then what the model supports (Harmony's reasoning
efforts), then the lengths (:func:`output_budget`): ``max_tokens`` over the context, the prompt over the
context, then what the context leaves to generate, which silently clamps ``max_tokens``.

vLLM answers some of these differently by how it renders the chat (``harmony``): a gpt-oss model's chat
goes through openai_harmony, any other model's through its chat template. Harmony knows three
reasoning efforts, renders an empty conversation, clamps ``max_tokens`` over the context instead of
refusing it, words a prompt over the context differently (no ``param``), builds structured output as a
structural tag and reports ``completion_tokens_details``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.devtools.sim.engine import BatchEngine

API_VERSION = "0.32.0"  # the vLLM release whose answers these are
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")  # the request model's literal
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vllm:request_success_total's labels
_JSON_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
_INT_TEXT = re.compile(r"\s*[+-]?\d+(\.0*)?\s*")
# vLLM's buckets for the request latency histograms (e2e, queue time)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class RequestError(Exception):
    """A request vLLM refuses: the HTTP status and its error body."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param = status, kind, message, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class ChatRequest:
    """The fields of a chat completion request the simulator acts on, validated."""

    messages: list[dict[str, Any]]
    priority: int
    max_tokens: int | None
    reasoning_effort: str | None
    ignore_eos: bool
    json_output: bool  # response_format asks for JSON (json_object or json_schema)
    schema: dict[str, Any] | None  # response_format's json_schema


def parse_request(raw: bytes, served_model: str, *, harmony: bool) -> ChatRequest:
    """Validate a request body as vLLM does up to the model check. Raises RequestError."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid("json_invalid", "body", "JSON decode error", "<body>") from None
    if not isinstance(body, dict):
        raise _invalid("model_attributes_type", "body", "Input should be a valid dictionary", body)
    messages = body.get("messages")
    if "messages" not in body:
        raise _invalid("missing", "messages", "Field required", f"<dict of {len(body)} items>")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _invalid("list_type", "messages", "Input should be a valid list", messages)
    priority = _lax_int(body["priority"], "priority") if "priority" in body else 0  # null is an error here
    max_tokens = None if body.get("max_tokens") is None else _lax_int(body["max_tokens"], "max_tokens")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        allowed = ", ".join(f"'{e}'" for e in REASONING_EFFORTS[:-1]) + f" or '{REASONING_EFFORTS[-1]}'"
        raise _invalid("literal_error", "reasoning_effort", f"Input should be {allowed}", effort)
    json_output, schema = _response_format(body.get("response_format"), harmony)
    model = body.get("model")
    if model is not None and model != served_model:  # no model: the served one, as vLLM does
        raise RequestError(404, "NotFoundError", f"The model `{model}` does not exist. Valid aliases: {served_model}.",
                           param="model")
    if not messages and not harmony:  # Harmony still renders its own system message
        raise RequestError(400, "BadRequestError",
                           "Cannot apply chat template to an empty conversation. Provide at least one message.")
    return ChatRequest(messages=messages, priority=priority, max_tokens=max_tokens, reasoning_effort=effort,
                       ignore_eos=bool(body.get("ignore_eos")), json_output=json_output, schema=schema)


def check_effort(effort: str, supported: list[str], *, harmony: bool) -> None:
    """Harmony (gpt-oss) knows low, medium and high; the other values of the literal are a 400 there
    (a chat template takes any)."""
    if effort in supported or not harmony:
        return
    if effort == "none":
        raise RequestError(400, "BadRequestError", "Harmony does not support reasoning_effort='none' "
                           "(parameter=reasoning_effort)", param="reasoning_effort")
    raise RequestError(400, "BadRequestError", f"reasoning_effort={effort!r} is not supported by Harmony. Supported "
                       f"values are: {', '.join(reversed(supported))}. (parameter=reasoning_effort)",
                       param="reasoning_effort")


def output_budget(prompt_tokens: int, max_tokens: int | None, limit: int, *, harmony: bool) -> int:
    """The tokens a request may generate: ``max_tokens`` clamped to what the context leaves (vLLM 0.32
    answers 200 with finish_reason ``length`` there, no error). Raises RequestError for ``max_tokens``
    over the context (a chat template's path only: Harmony's clamps it too), a prompt over the context
    (the template path stops tokenizing at ``limit + 1``, so that is the count it names; Harmony names
    the whole prompt), and nothing left to generate."""
    if max_tokens is not None and max_tokens > limit and not harmony:
        raise RequestError(400, "BadRequestError", f"max_tokens={max_tokens} cannot be greater than max_model_len="
                           f"{limit}. Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
                           param="max_tokens")
    if prompt_tokens > limit and harmony:
        raise RequestError(400, "BadRequestError",
                           f"Input length ({prompt_tokens}) exceeds model's maximum context length ({limit}).")
    if prompt_tokens > limit:
        raise RequestError(400, "BadRequestError", f"This model's maximum context length is {limit} tokens. However, "
                           f"your prompt contains at least {limit + 1} input tokens, which exceeds this limit even "
                           "without any output tokens. Please reduce the length of the input prompt. "
                           f"(parameter=input_tokens, value={limit + 1})", param="input_tokens")
    budget = limit - prompt_tokens if max_tokens is None else min(max_tokens, limit - prompt_tokens)
    if budget < 1:
        raise RequestError(400, "BadRequestError", f"max_tokens must be at least 1, got {budget}. "
                           f"(parameter=max_tokens, value={budget})", param="max_tokens")
    return budget


def conform(answer: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``answer`` made to satisfy a json_schema the way a grammar would force it: only the listed
    properties when ``additionalProperties`` is false, the required ones present (null when the answer
    has none), strings cut to ``maxLength``. Other keywords are not enforced."""
    props = schema.get("properties") or {}
    closed = schema.get("additionalProperties") is False
    out = {k: v for k, v in answer.items() if k in props or not closed}
    for key in schema.get("required") or ():
        out.setdefault(key, None)
    for key, value in out.items():
        limit = (props.get(key) or {}).get("maxLength")
        if isinstance(value, str) and isinstance(limit, int):
            out[key] = value[:limit]
    return out


def completion(*, model: str, content: str | None, reasoning: str | None, reasoning_field: str,
               finish_reason: str, prompt_tokens: int, completion_tokens: int,
               reasoning_tokens: int | None) -> dict[str, Any]:
    """A non-streaming chat completion with every field vLLM 0.32 sends (nulls included);
    ``reasoning_tokens`` None leaves ``completion_tokens_details`` null (a chat template's path)."""
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": None, "audio": None,
               "function_call": None, reasoning_field: reasoning}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason,
                     "stop_reason": None, "token_ids": None, "routed_experts": None}],
        "service_tier": None,
        "system_fingerprint": f"vllm-{API_VERSION}-sim",
        # vLLM reports cached prompt tokens only with --enable-prompt-tokens-details (off by default)
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                  "completion_tokens": completion_tokens, "prompt_tokens_details": None,
                  "completion_tokens_details": None if reasoning_tokens is None else {
                      "reasoning_tokens": reasoning_tokens}},
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def _response_format(value: Any, harmony: bool) -> tuple[bool, dict[str, Any] | None]:
    if value is None:
        return False, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _invalid("union_tag_invalid", "response_format", "Input tag does not match any of the expected tags",
                       value)
    if kind != "json_schema":
        return kind == "json_object", None
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return True, None
    bad = _unsupported_type(schema)
    if bad is not None and harmony:  # the schema goes into a structural tag for the final channel
        raise RequestError(400, "BadRequestError", "Invalid structural tag specification.")
    if bad is not None:
        raise RequestError(400, "BadRequestError", f'Failed to transform json schema into a grammar: Unsupported type '
                           f'"{bad}"')
    return True, schema


def _unsupported_type(node: Any) -> str | None:
    if isinstance(node, list):
        return next((t for t in map(_unsupported_type, node) if t is not None), None)
    if not isinstance(node, dict):
        return None
    kinds = node.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind is not None and kind not in _JSON_TYPES:
            return str(kind)
    return next((t for t in map(_unsupported_type, node.values()) if t is not None), None)


def _lax_int(value: Any, field: str) -> int:
    """An integer field as pydantic's lax mode reads JSON: integers, booleans, floats without a fraction
    and strings of such numbers."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _invalid("int_from_float", field, "Input should be a valid integer, got a number with a fractional part",
                       value)
    if isinstance(value, str):
        if _INT_TEXT.fullmatch(value):
            return int(value.strip().split(".")[0])
        raise _invalid("int_parsing", field, "Input should be a valid integer, unable to parse string as an integer",
                       value)
    raise _invalid("int_type", field, "Input should be a valid integer", value)


def _invalid(kind: str, field: str, message: str, value: Any) -> RequestError:
    loc = "body" if field == "body" else f"body.{field}"
    detail = f"{{'type': '{kind}', 'loc': '{loc}', 'msg': '{message}', 'input': {str(value)!r}}}"
    return RequestError(400, "Bad Request", f"1 validation error:\n  {detail}", param=loc)


class VllmCollector(Collector):
    """vLLM's engine metrics, labelled as vLLM labels them (``engine``, ``model_name``)."""

    def __init__(self, engine: BatchEngine, model: str, finished: Counter[str]) -> None:
        self._e = engine
        self._m = model
        self._finished = finished

    def collect(self) -> Iterator[Any]:
        e, names, labels = self._e, ["engine", "model_name"], ["0", self._m]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(labels, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", e.running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage())
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", e.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", e.generation_tokens_total)
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of tokens.", e.prefix_queries_total)
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of tokens.", e.prefix_hits_total)
        # Finished requests by reason; a request its client aborted is not among them (as on vLLM 0.32,
        # where the "abort" label stays at 0 for client disconnects).
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=["engine", "finished_reason", "model_name"])
        for reason in FINISH_REASONS:
            success.add_metric(["0", reason, self._m], self._finished[reason])
        yield success
