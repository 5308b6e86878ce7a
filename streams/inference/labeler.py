"""From (policy, content) to a decision: request, inference on the pool, verdict.

Retries: infrastructure failures are retried inside the pool for as long as it takes. Unusable
answers (``unparseable_output``, ``truncated_reasoning``) are retried up to
``replicas.max_attempts`` times, since a new sample may parse; then the outcome is a failure that
the caller dead-letters. A request the replica rejects (``request_rejected``) is not retried.
Per-item failures are returned as data (:class:`Outcome`), never raised by :meth:`Labeler.label`.

With a dedupe cache, identical content already decided under the same policy version, model and
effort is decided once (``decided_by: cache``, zero token usage); concurrent duplicates share one
request (see :mod:`streams.inference.cache` for what waiters get when that request fails).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from streams.config import ReplicaSettings
from streams.errors import ErrorType, PoisonError
from streams.inference.cache import DedupeCache, cache_key
from streams.inference.prompt import build_combined_request, build_request
from streams.inference.replicas.client import ChatResult
from streams.inference.replicas.pool import DEFAULT_LANE, Lane, ReplicaPool
from streams.inference.verdict import Verdict, parse_combined, parse_verdict
from streams.policy.model import Policy

log = logging.getLogger(__name__)

_EFFORT_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict plus what it cost; independent of Kafka (used by ``classify`` and ``eval`` too)."""

    verdict: Verdict
    reasoning: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What was decided for one policy of one event: a verdict, or a failure to dead-letter."""

    policy: Policy
    verdict: Verdict | None = None
    reasoning: str | None = None
    decided_by: str = "model"  # model | cache | prefilter
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    failure: PoisonError | None = None


DECISION_OVERHEAD_BYTES = 640  # Decision, Verdict, small strings, key, LRU node (tracemalloc: 580-630)


def decision_bytes(d: Decision) -> int:
    """Approximate memory a cached decision holds: its two texts plus a fixed overhead."""
    return DECISION_OVERHEAD_BYTES + sys.getsizeof(d.reasoning) + sys.getsizeof(d.verdict.rationale)


class Labeler:
    """Classifies content against policies over a :class:`ReplicaPool` (``replicas`` settings:
    model name, attempts per request, structured output)."""

    def __init__(self, pool: ReplicaPool, replicas: ReplicaSettings, *, default_effort: str,
                 cache: DedupeCache[Decision] | None = None, effort: str | None = None) -> None:
        """``default_effort``: for policies that set none; ``effort``: for every request, over the
        policy's own (``classify --effort``, ``eval --effort``)."""
        self._pool = pool
        self.model = replicas.model
        self._max_attempts = replicas.max_attempts
        self._structured = replicas.structured_output
        self._default_effort = default_effort
        self._effort = effort
        self._cache = cache
        self._send_priority = replicas.priority

    def effort(self, policy: Policy) -> str:
        """The reasoning effort requests for ``policy`` carry: the override, else the policy's own,
        else the default."""
        return self._effort or policy.effort(self._default_effort)

    def _laned(self, body: dict[str, Any], lane: Lane) -> dict[str, Any]:
        """With ``replicas.priority``, the request carries vLLM's ``priority`` (the event's lane)."""
        if self._send_priority:
            body["priority"] = lane.priority
        return body

    async def decide(self, policy: Policy, content: str, lane: Lane = DEFAULT_LANE) -> Decision:
        """Ask the model; raises PoisonError when no usable answer came after the allowed attempts."""
        body = self._laned(build_request(policy, content, model=self.model, reasoning_effort=self.effort(policy),
                                         structured_output=self._structured), lane)
        last: PoisonError | None = None
        for attempt in range(1, self._max_attempts + 1):
            result = await self._pool.chat(body, lane)
            try:
                verdict = parse_verdict(result.content, result.finish_reason, output=policy.meta.output)
            except PoisonError as exc:
                last = exc
                log.warning("unusable model answer policy=%s replica=%s attempt=%d error_type=%s",
                            policy.id, result.replica, attempt, exc.error_type)
                continue
            return Decision(verdict, result.reasoning, result.prompt_tokens, result.completion_tokens, attempt)
        assert last is not None
        raise PoisonError(last.error_type, f"{last} (after {self._max_attempts} attempts)") from last

    async def decide_combined(self, policies: list[Policy], content: str, lane: Lane = DEFAULT_LANE
                              ) -> tuple[dict[str, tuple[Verdict | PoisonError, str | None]], ChatResult, int]:
        """One request for several policies; retried while any policy's verdict is unusable.

        Returns, per policy, its verdict (or error) with the reasoning of the answer it came from,
        then the last response and the attempts made. The first usable verdict of a policy is kept:
        a retry only fills in the policies still without one (a later sample must not silently
        replace a verdict, nor pair it with another answer's reasoning).
        """
        effort = max((self.effort(p) for p in policies), key=_EFFORT_RANK.__getitem__)
        body = self._laned(build_combined_request(policies, content, model=self.model, reasoning_effort=effort), lane)
        ids = [p.id for p in policies]
        best: dict[str, tuple[Verdict | PoisonError, str | None]] = {}
        for attempt in range(1, self._max_attempts + 1):
            result = await self._pool.chat(body, lane)
            for pid, v in parse_combined(result.content, ids, result.finish_reason).items():
                if not isinstance(best.get(pid, (None,))[0], Verdict):
                    best[pid] = (v, result.reasoning)
            if all(isinstance(v, Verdict) for v, _ in best.values()):
                return best, result, attempt
            log.warning("unusable combined answer policies=%s replica=%s attempt=%d", ids, result.replica, attempt)
        return best, result, self._max_attempts

    def cache_key(self, policy: Policy, content: str) -> bytes | None:
        """The dedupe cache's key for (policy, content); None without a cache."""
        if self._cache is None:
            return None
        return cache_key(content, policy.version, policy.id, self.model, self.effort(policy))

    def cached(self, policy: Policy, key: bytes) -> Outcome | None:
        """The outcome the dedupe cache already holds for ``key``, without awaiting anything (the
        consumer's fast path: no task per event), or None (a miss: pass ``key`` to :meth:`label`)."""
        assert self._cache is not None
        decision = self._cache.peek(key)
        if decision is None:
            return None
        return Outcome(policy, decision.verdict, decision.reasoning, "cache", attempts=decision.attempts)

    async def label(self, policies: list[Policy], content: str, key: bytes | None = None,
                    lane: Lane = DEFAULT_LANE) -> list[Outcome]:
        """Decide ``content`` for one policy, or for several in one request (``policies.mode:
        combined``); one outcome per policy, failures included. ``key``: the cache key already
        computed (and counted) by a :meth:`cached` miss."""
        if len(policies) > 1:
            return await self._label_combined(policies, content, lane)
        policy = policies[0]
        cached = False
        try:
            if self._cache is None:
                decision = await self.decide(policy, content, lane)
            else:
                lookup = key if key is not None else self.cache_key(policy, content)
                assert lookup is not None
                decision, cached = await self._cache.get_or_compute(
                    lookup, lambda: self.decide(policy, content, lane), counted=key is not None)
        except PoisonError as exc:
            attempts = self._max_attempts if exc.error_type != ErrorType.REQUEST_REJECTED else 1
            return [Outcome(policy, failure=exc, attempts=attempts)]
        if cached:
            return [Outcome(policy, decision.verdict, decision.reasoning, "cache", attempts=decision.attempts)]
        return [Outcome(policy, decision.verdict, decision.reasoning, "model", decision.prompt_tokens,
                        decision.completion_tokens, decision.attempts)]

    async def _label_combined(self, policies: list[Policy], content: str, lane: Lane) -> list[Outcome]:
        """The request's token usage is split evenly over the policies, so that summing ``usage``
        over labels gives the real cost."""
        try:
            verdicts, result, attempts = await self.decide_combined(policies, content, lane)
        except PoisonError as exc:  # request_rejected: the same for every policy
            return [Outcome(p, failure=exc) for p in policies]
        k = len(policies)
        outcomes = []
        for i, p in enumerate(policies):
            v, reasoning = verdicts[p.id]
            if isinstance(v, PoisonError):
                outcomes.append(Outcome(p, failure=v, attempts=attempts))
                continue
            prompt = result.prompt_tokens // k + (result.prompt_tokens % k if i == 0 else 0)
            completion = result.completion_tokens // k + (result.completion_tokens % k if i == 0 else 0)
            outcomes.append(Outcome(p, v, reasoning, "model", prompt, completion, attempts))
        return outcomes
