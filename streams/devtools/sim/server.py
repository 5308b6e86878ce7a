"""HTTP face of the replica simulator: the subset of vLLM's OpenAI-compatible server we use.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming; the
response carries ``message.reasoning`` (or ``reasoning_content`` to mimic vLLM before PR #27752)
and ``usage``), ``GET /metrics`` with vLLM's metric names. Requests wait on the continuous-batching
engine (:mod:`streams.devtools.sim.engine`), scaled by ``time_scale`` (10 = ten times faster than the GPU).

Metric values are what happened on this server: gauges read the engine at scrape time, latency
histograms record wall-clock seconds as clients saw them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.devtools.sim.answers import Answer, AnswerKey, policy_examples
from streams.devtools.sim.engine import BatchEngine, SimRequest
from streams.ops.profiles import CHARS_PER_TOKEN, COMBINED_REASONING_SHARE, HARMONY_OVERHEAD_TOKENS, Profile

log = logging.getLogger(__name__)

_COMBINED = re.compile(r"^=== POLICY (\S+) ===$", re.MULTILINE)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_FILLER = (
    "The policy defines what counts as a violation and gives examples near the boundary. "
    "I compare the content with each definition, check the safe cases, and look for context that "
    "changes the meaning. "
)


@dataclass(frozen=True)
class Faults:
    """Seeded fault injection rates (0..1) applied per request, in arrival order."""

    error_rate: float = 0.0
    timeout_rate: float = 0.0
    malformed_rate: float = 0.0
    truncate_rate: float = 0.0
    seed: int = 0


@dataclass
class SimConfig:
    profile: Profile
    model: str
    time_scale: float = 1.0
    answer_key: AnswerKey | None = None
    faults: Faults = field(default_factory=Faults)
    reasoning_field: str = "reasoning"
    scheduling_policy: str = "fcfs"  # vLLM's --scheduling-policy: fcfs (priority ignored) or priority


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


class EngineRunner:
    """Drives a :class:`BatchEngine` in (scaled) wall-clock time on the event loop."""

    def __init__(self, engine: BatchEngine, time_scale: float) -> None:
        self.engine = engine
        self._scale = time_scale
        self._t0 = time.monotonic()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self._scale

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def generate(self, req: SimRequest) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        req.handle = fut
        self._resolve(self.engine.submit(req, self.now()))
        self._wake.set()
        try:
            await fut
        except asyncio.CancelledError:
            self.engine.abort(req)
            self._wake.set()
            raise

    def _resolve(self, finished: list[SimRequest]) -> None:
        for r in finished:
            if r.handle is not None and not r.handle.done():
                r.handle.set_result(None)

    async def _run(self) -> None:
        while True:
            self._resolve(self.engine.advance(self.now()))
            delay = self.engine.next_event_in()
            self._wake.clear()
            if delay is None:
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay / self._scale)


class _VllmCollector(Collector):
    def __init__(self, engine: BatchEngine, model: str) -> None:
        self._e = engine
        self._m = model

    def collect(self) -> Iterator[Any]:
        e, labels = self._e, [self._m]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(labels, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", e.running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage())
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", e.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", e.generation_tokens_total)
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of tokens.", e.prefix_queries_total)
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of tokens.", e.prefix_hits_total)


class SimServer:
    """Request handling: parse, look up the verdict, wait on the engine, render vLLM's response."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = BatchEngine(config.profile, scheduling_policy=config.scheduling_policy)
        self.runner = EngineRunner(self.engine, config.time_scale)
        self.registry = CollectorRegistry()
        self.registry.register(_VllmCollector(self.engine, config.model))
        self._e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.",
                              ["model_name"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._queue = Histogram("vllm:request_queue_time_seconds", "Time spent waiting in the queue.",
                                ["model_name"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._fault_rng = random.Random(config.faults.seed)
        self._examples: dict[str, Any] = {}
        self.healthy = True

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.runner.start()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.runner.stop()

    async def health(self, _req: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def metrics(self, _req: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def models(self, _req: web.Request) -> web.Response:
        model = self.config.model
        return _json({"object": "list", "data": [{
            "id": model, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": model,
            "parent": None, "max_model_len": self.config.profile.max_model_len}]})

    async def chat(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            body = orjson.loads(await request.read())
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
            policy = _text_of(next((m for m in messages if m.get("role") in ("system", "developer")), None))
            user = _text_of(next((m for m in reversed(messages) if m.get("role") == "user"), None))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            return _error(400, "BadRequestError", f"invalid request: {exc}")
        model = body.get("model")
        if model != self.config.model:
            return _error(404, "NotFoundError", f"The model `{model}` does not exist.")
        effort = body.get("reasoning_effort") or "medium"
        if effort not in self.config.profile.reasoning_median:
            return _error(400, "BadRequestError", f"invalid reasoning_effort {effort!r}")
        # vLLM 0.32 validates both fields as integers; priority is then ignored unless the server runs
        # --scheduling-policy priority, silently (measured on the real engine: docs/development.md)
        priority, max_tokens = body.get("priority", 0), body.get("max_tokens")
        if not _is_int(priority):
            return _error(400, "BadRequestError", "Input should be a valid integer", param="body.priority")
        if max_tokens is not None and (not _is_int(max_tokens) or int(max_tokens) < 1):
            return _error(400, "BadRequestError", "max_tokens must be at least 1", param="max_tokens")

        f, roll = self.config.faults, self._fault_rng.random()
        if roll < f.error_rate:
            return _error(500, "InternalServerError", "simulated engine error (--error-rate)")
        if roll < f.error_rate + f.timeout_rate:
            await asyncio.sleep(3600)  # the client's timeout fires first
        roll -= f.error_rate + f.timeout_rate
        malformed = 0 <= roll < f.malformed_rate
        truncated = f.malformed_rate <= roll < f.malformed_rate + f.truncate_rate

        sections = _combined_sections(policy)
        if sections:
            answers = {pid: self._answer(user, text) for pid, text in sections}
            answer = next(iter(answers.values()))
            final = _render_combined(answers) if not malformed else "I am not sure what to answer here."
            # [U] assumption: the content is read once, each policy is still reasoned about: 80% of the
            # sum of the per-policy reasoning lengths. The real ratio is not published.
            reasoning_tokens = int(COMBINED_REASONING_SHARE * sum(
                self._reasoning_tokens(f.seed, text, user, effort) for _, text in sections))
        else:
            answer = self._answer(user, policy)
            json_out = "response_format" in body or '"violation"' in policy
            final = _render_final(answer, json_out) if not malformed else "I am not sure what to answer here."
            reasoning_tokens = self._reasoning_tokens(f.seed, policy, user, effort)
        final_tokens = estimate_tokens(final)
        policy_tokens = estimate_tokens(policy)
        prompt_tokens = HARMONY_OVERHEAD_TOKENS + policy_tokens + estimate_tokens(user)
        limit = self.config.profile.max_model_len
        if max_tokens is not None and int(max_tokens) > limit:
            return _error(400, "BadRequestError", f"max_tokens={int(max_tokens)} cannot be greater than "
                          f"max_model_len={limit}. Please request fewer output tokens.", param="max_tokens")
        if prompt_tokens >= limit:  # vLLM refuses a prompt that leaves no room to generate
            return _error(400, "BadRequestError", f"This model's maximum context length is {limit} tokens. However, "
                          f"your prompt contains at least {prompt_tokens} input tokens, so it cannot be processed. "
                          "Please reduce the length of the input messages.", param="input_tokens")
        if truncated:  # the fault: the reasoning ran to the length limit, no final answer
            final, output_tokens = "", reasoning_tokens
        else:
            output_tokens = reasoning_tokens + final_tokens
        # The output budget: max_tokens, silently clamped to what the context leaves (vLLM 0.32 answers
        # 200 with finish_reason "length" rather than 400 when prompt + max_tokens exceed the context).
        budget = limit - prompt_tokens if max_tokens is None else min(int(max_tokens), limit - prompt_tokens)
        if output_tokens > budget:
            truncated = True
            if budget > reasoning_tokens and final:  # cut inside the final answer: what was written of it
                final = final[:max(0, int((budget - reasoning_tokens) * CHARS_PER_TOKEN))]
            else:
                reasoning_tokens, final = budget, ""
            output_tokens = budget
        req = SimRequest(
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            prefix_key=_digest(policy),
            prefix_tokens=HARMONY_OVERHEAD_TOKENS + policy_tokens,
            prompt_key=_digest(policy + "\x1f" + user),
            priority=int(priority),
        )
        await self.runner.generate(req)
        wall = time.monotonic() - started
        self._e2e.labels(self.config.model).observe(wall)
        if req.admitted is not None:
            self._queue.labels(self.config.model).observe(max(0.0, req.admitted - req.arrival) / self.config.time_scale)
        reasoning = _reasoning_text(answer, reasoning_tokens)
        message: dict[str, Any] = {"role": "assistant", "content": final or None,
                                   self.config.reasoning_field: reasoning, "tool_calls": []}
        return _json({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "length" if truncated else "stop", "stop_reason": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                      "total_tokens": prompt_tokens + output_tokens,
                      "prompt_tokens_details": {"cached_tokens": req.cached_tokens}},
            "prompt_logprobs": None,
        })

    def _reasoning_tokens(self, seed: int, policy: str, user: str, effort: str) -> int:
        """Heavy-tailed reasoning length, the same for the same request (seeded by its content)."""
        rng = random.Random(_digest(f"{seed}\x1f{policy}\x1f{user}\x1f{effort}"))
        return _lognormal(rng, self.config.profile.reasoning_median[effort], self.config.profile.reasoning_sigma)

    def _answer(self, user: str, policy: str) -> Answer:
        if self.config.answer_key is not None:
            found = self.config.answer_key.find(user, policy)
            if found is not None:
                return found
        key = hashlib.sha256(policy.encode()).hexdigest()
        index = self._examples.get(key)
        if index is None:
            if len(self._examples) > 256:
                self._examples.clear()
            index = self._examples[key] = policy_examples(policy)
        found = index.find(user, "")
        return found if found is not None else Answer(False, None, "default")


def _text_of(message: dict[str, Any] | None) -> str:
    if message is None:
        return ""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _combined_sections(system: str) -> list[tuple[str, str]]:
    """(policy id, policy text) for each ``=== POLICY <id> ===`` section of a combined prompt."""
    parts = _COMBINED.split(system)
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def _render_combined(answers: dict[str, Answer]) -> str:
    parts = (f"{orjson.dumps(pid).decode()}: {_render_final(a, True)}" for pid, a in answers.items())
    return "{" + ", ".join(parts) + "}"


def _render_final(answer: Answer, json_out: bool) -> str:
    if not json_out:
        return "1" if answer.violation else "0"
    where = {"answer-key": "answer key", "policy-examples": "policy example", "default": "no match"}[answer.source]
    rationale = (f"Simulated verdict ({where}): violates {answer.category or 'the policy'}." if answer.violation
                 else f"Simulated verdict ({where}): no violating rule applies.")
    return orjson.dumps({
        "violation": int(answer.violation),
        "policy_category": answer.category if answer.violation else None,
        "rule_ids": [answer.category] if (answer.violation and answer.category) else [],
        "confidence": "high" if answer.source != "default" else "medium",
        "rationale": rationale,
    }).decode()


def _reasoning_text(answer: Answer, tokens: int) -> str:
    head = (f"[simulated reasoning from safeguard replica-sim, not a model] verdict source: {answer.source}; "
            f"violation={int(answer.violation)}. ")
    want = max(0, int(tokens * CHARS_PER_TOKEN) - len(head))
    reps = want // len(_FILLER) + 1
    return head + (_FILLER * reps)[:want]


def _lognormal(rng: random.Random, median: float, sigma: float) -> int:
    return max(8, min(32_768, int(median * math.exp(sigma * rng.gauss(0.0, 1.0)))))


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _json(doc: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _error(status: int, kind: str, message: str, *, param: str | None = None) -> web.Response:
    return _json({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def _is_int(value: Any) -> bool:
    """What pydantic's lax int accepts from JSON: an integer, or a float with no fraction."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Run one simulated replica until cancelled."""
    server = SimServer(config)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("replica-sim listening on http://%s:%d/v1 profile=%s model=%s time_scale=%s",
             host, port, config.profile.name, config.model, config.time_scale)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
