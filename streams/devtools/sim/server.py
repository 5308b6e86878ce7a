"""HTTP face of the replica simulator: the subset of vLLM's OpenAI-compatible server we use.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming; the
response carries ``message.reasoning`` (or ``reasoning_content`` to mimic vLLM before PR #27752)
and ``usage``), ``GET /metrics`` with vLLM's metric names. Requests wait on the continuous-batching
engine (:mod:`streams.devtools.sim.engine`), scaled by ``time_scale`` (10 = ten times faster than the GPU).

Metric values are what happened on this server: gauges read the engine at scrape time, latency
histograms record wall-clock seconds as clients saw them. Request checks, error bodies and response
fields are vLLM 0.32's (:mod:`streams.devtools.sim.vllm_api`); a client that goes away aborts its
request, as on vLLM (the handler is cancelled, the engine frees the slot).
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
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.devtools.sim.answers import Answer, AnswerKey, policy_examples
from streams.devtools.sim.engine import BatchEngine, SimRequest
from streams.devtools.sim.vllm_api import (
    LATENCY_BUCKETS,
    ChatRequest,
    RequestError,
    VllmCollector,
    check_effort,
    completion,
    conform,
    output_budget,
    parse_request,
)
from streams.ops.profiles import CHARS_PER_TOKEN, COMBINED_REASONING_SHARE, HARMONY_OVERHEAD_TOKENS, Profile

log = logging.getLogger(__name__)

_COMBINED = re.compile(r"^=== POLICY (\S+) ===$", re.MULTILINE)
_EFFORT_LENGTH = {"none": "low", "minimal": "low", "xhigh": "high", "max": "high"}
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
    # How vLLM renders the chat, which decides some of its answers (streams.devtools.sim.vllm_api):
    # "harmony" for gpt-oss models, "template" for a model with a chat template (the engine tier's Llama).
    chat_format: str = "harmony"


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

    def sync(self) -> None:
        """Bring the engine to now (a scrape sees the tokens generated so far, as vLLM's counters do)."""
        self._resolve(self.engine.advance(self.now()))
        self._wake.set()

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
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that arrives
            # as the event is set (an abort wakes the loop), and stop() would then wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay / self._scale):
                    await self._wake.wait()


class SimServer:
    """Request handling: parse, look up the verdict, wait on the engine, render vLLM's response."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = BatchEngine(config.profile, scheduling_policy=config.scheduling_policy)
        self.runner = EngineRunner(self.engine, config.time_scale)
        self.registry = CollectorRegistry()
        self.finished: Counter[str] = Counter()
        self.registry.register(VllmCollector(self.engine, config.model, self.finished))
        self._e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                              ["engine", "model_name"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._queue = Histogram("vllm:request_queue_time_seconds",
                                "Histogram of time spent in WAITING phase for request.",
                                ["engine", "model_name"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._fault_rng = random.Random(config.faults.seed)
        if config.chat_format not in ("harmony", "template"):
            raise ValueError(f"chat_format must be harmony or template, not {config.chat_format!r}")
        self.harmony = config.chat_format == "harmony"
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
        self.runner.sync()
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def models(self, _req: web.Request) -> web.Response:
        model = self.config.model
        return _json({"object": "list", "data": [{
            "id": model, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": model,
            "parent": None, "max_model_len": self.config.profile.max_model_len}]})

    async def chat(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            req = parse_request(await request.read(), self.config.model, harmony=self.harmony)
            check_effort(req.reasoning_effort or "medium", list(self.config.profile.reasoning_median),
                         harmony=self.harmony)
        except RequestError as exc:
            return _json(exc.body(), exc.status)
        f, roll = self.config.faults, self._fault_rng.random()
        if roll < f.error_rate:
            return _error(500, "InternalServerError", "simulated engine error (--error-rate)")
        if roll < f.error_rate + f.timeout_rate:
            await asyncio.sleep(3600)  # the client's timeout fires first
        roll -= f.error_rate + f.timeout_rate
        malformed = 0 <= roll < f.malformed_rate
        faulty_cut = f.malformed_rate <= roll < f.malformed_rate + f.truncate_rate
        try:
            return await self._generate(req, started, malformed=malformed, faulty_cut=faulty_cut)
        except RequestError as exc:
            return _json(exc.body(), exc.status)

    async def _generate(self, req: ChatRequest, started: float, *, malformed: bool, faulty_cut: bool) -> web.Response:
        policy = _text_of(next((m for m in req.messages if m.get("role") in ("system", "developer")), None))
        user = _text_of(next((m for m in reversed(req.messages) if m.get("role") == "user"), None))
        # efforts Harmony lacks (a chat template's path takes them) reason like the nearest it has
        effort = _EFFORT_LENGTH.get(req.reasoning_effort or "medium", req.reasoning_effort or "medium")
        sections = _combined_sections(policy)
        seed = self.config.faults.seed
        if sections:
            answers = {pid: self._answer(user, text) for pid, text in sections}
            answer = next(iter(answers.values()))
            final = _render_combined(answers) if not malformed else "I am not sure what to answer here."
            # [U] assumption: the content is read once, each policy is still reasoned about: 80% of the
            # sum of the per-policy reasoning lengths. The real ratio is not published.
            reasoning_tokens = int(COMBINED_REASONING_SHARE * sum(
                self._reasoning_tokens(seed, text, user, effort) for _, text in sections))
        else:
            answer = self._answer(user, policy)
            json_out = req.json_output or '"violation"' in policy
            final = "I am not sure what to answer here." if malformed else _render_final(answer, json_out, req.schema)
            reasoning_tokens = self._reasoning_tokens(seed, policy, user, effort)
        policy_tokens = estimate_tokens(policy)
        prompt_tokens = HARMONY_OVERHEAD_TOKENS + policy_tokens + estimate_tokens(user)
        budget = output_budget(prompt_tokens, req.max_tokens, self.config.profile.max_model_len, harmony=self.harmony)
        truncated = faulty_cut
        if faulty_cut:  # the fault: the reasoning ran to the length limit, no final answer
            final, output_tokens = "", reasoning_tokens
        else:
            output_tokens = reasoning_tokens + estimate_tokens(final)
        if output_tokens > budget:
            truncated = True
            if budget > reasoning_tokens and final:  # cut inside the final answer: what was written of it
                final = final[:max(0, int((budget - reasoning_tokens) * CHARS_PER_TOKEN))]
            else:
                reasoning_tokens, final = budget, ""
            output_tokens = budget
        elif req.ignore_eos and output_tokens < budget:  # the end of the answer does not stop it: the budget does
            truncated, output_tokens = True, budget
        sim = SimRequest(
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            prefix_key=_digest(policy),
            prefix_tokens=HARMONY_OVERHEAD_TOKENS + policy_tokens,
            prompt_key=_digest(policy + "\x1f" + user),
            priority=req.priority,
        )
        await self.runner.generate(sim)
        wall = time.monotonic() - started
        self._e2e.labels("0", self.config.model).observe(wall)
        if sim.admitted is not None:
            queued = max(0.0, sim.admitted - sim.arrival) / self.config.time_scale
            self._queue.labels("0", self.config.model).observe(queued)
        finish_reason = "length" if truncated else "stop"
        self.finished[finish_reason] += 1
        return _json(completion(model=self.config.model, content=final or None,
                                reasoning=_reasoning_text(answer, reasoning_tokens),
                                reasoning_field=self.config.reasoning_field, finish_reason=finish_reason,
                                prompt_tokens=prompt_tokens, completion_tokens=output_tokens,
                                reasoning_tokens=reasoning_tokens if self.harmony else None))

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


def _render_final(answer: Answer, json_out: bool, schema: dict[str, Any] | None = None) -> str:
    if not json_out:
        return "1" if answer.violation else "0"
    where = {"answer-key": "answer key", "policy-examples": "policy example", "default": "no match"}[answer.source]
    rationale = (f"Simulated verdict ({where}): violates {answer.category or 'the policy'}." if answer.violation
                 else f"Simulated verdict ({where}): no violating rule applies.")
    verdict = {
        "violation": int(answer.violation),
        "policy_category": answer.category if answer.violation else None,
        "rule_ids": [answer.category] if (answer.violation and answer.category) else [],
        "confidence": "high" if answer.source != "default" else "medium",
        "rationale": rationale,
    }
    return orjson.dumps(verdict if schema is None else conform(verdict, schema)).decode()


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


def _error(status: int, kind: str, message: str) -> web.Response:
    return _json(RequestError(status, kind, message).body(), status)


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Run one simulated replica until cancelled."""
    server = SimServer(config)
    # handler_cancellation: a client that disconnects cancels its handler, which aborts the request in
    # the engine (vLLM does; aiohttp stopped cancelling handlers by default in 3.9)
    runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("replica-sim listening on http://%s:%d/v1 profile=%s model=%s time_scale=%s",
             host, port, config.profile.name, config.model, config.time_scale)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
