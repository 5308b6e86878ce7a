"""From (policy, content) to a label: request, inference on the pool, verdict, label event.

Retries: infrastructure failures are retried inside the pool for as long as it takes. Unusable
answers (``unparseable_output``, ``truncated_reasoning``) are retried up to
``replicas.max_attempts`` times, since a new sample may parse; then the outcome is a failure that
the caller dead-letters. A request the replica rejects (``request_rejected``) is not retried.
Per-item failures are returned as data, never raised.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from streams.cache import DedupeCache, cache_key
from streams.errors import PoisonError
from streams.events import label_doc
from streams.policies import Policy
from streams.prompt import build_combined_request, build_request
from streams.replicas.client import ChatResult
from streams.replicas.pool import ReplicaPool
from streams.verdict import Verdict, parse_combined, parse_verdict

log = logging.getLogger(__name__)

SourceRef = tuple[str, int, int]  # (topic, partition, offset) of the content event
_EFFORT_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True)
class Outcome:
    """Result of labelling one item against one policy: a label, or a failure to dead-letter.

    ``label`` is the label event as a document (:func:`streams.events.label_doc`)."""

    policy: Policy
    label: dict[str, Any] | None = None
    reasoning: str | None = None
    failure: PoisonError | None = None
    attempts: int = 1


@dataclass(frozen=True)
class Decision:
    """A verdict plus what it cost; independent of Kafka (used by ``classify`` and ``eval`` too)."""

    verdict: Verdict
    reasoning: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


DECISION_OVERHEAD_BYTES = 640  # Decision, Verdict, small strings, key, LRU node (tracemalloc: 580-630)


def decision_bytes(d: Decision) -> int:
    """Approximate memory a cached decision holds: its two texts plus a fixed overhead."""
    return DECISION_OVERHEAD_BYTES + sys.getsizeof(d.reasoning) + sys.getsizeof(d.verdict.rationale)


class Labeler:
    """Classifies content against policies over a :class:`ReplicaPool`."""

    def __init__(
        self,
        pool: ReplicaPool,
        *,
        model: str,
        default_effort: str,
        max_attempts: int,
        structured_output: bool = False,
        inline_reasoning: bool = True,
        cache: DedupeCache[Decision] | None = None,
    ) -> None:
        self._cache = cache
        self._pool = pool
        self.model = model
        self._default_effort = default_effort
        self._max_attempts = max_attempts
        self._structured = structured_output
        self._inline = inline_reasoning

    async def decide(self, policy: Policy, content: str) -> Decision:
        """Ask the model; raises PoisonError when no usable answer came after the allowed attempts."""
        body = build_request(
            policy,
            content,
            model=self.model,
            reasoning_effort=policy.effort(self._default_effort),
            structured_output=self._structured,
        )
        last: PoisonError | None = None
        for attempt in range(1, self._max_attempts + 1):
            result = await self._pool.chat(body)
            try:
                verdict = parse_verdict(result.content, result.finish_reason)
            except PoisonError as exc:
                last = exc
                log.warning(
                    "unusable model answer policy=%s replica=%s attempt=%d error_type=%s",
                    policy.id, result.replica, attempt, exc.error_type,
                )
                continue
            return Decision(verdict, result.reasoning, result.prompt_tokens, result.completion_tokens, attempt)
        assert last is not None
        raise PoisonError(last.error_type, f"{last} (after {self._max_attempts} attempts)") from last

    async def decide_combined(self, policies: list[Policy], content: str
                              ) -> tuple[dict[str, Verdict | PoisonError], ChatResult, int]:
        """One request for several policies; retried while any policy's verdict is unusable.

        Returns per-policy verdicts or errors, the last response, and the attempts made.
        """
        effort = max((p.effort(self._default_effort) for p in policies), key=_EFFORT_RANK.__getitem__)
        body = build_combined_request(policies, content, model=self.model, reasoning_effort=effort)
        ids = [p.id for p in policies]
        best: dict[str, Verdict | PoisonError] = {}
        for attempt in range(1, self._max_attempts + 1):
            result = await self._pool.chat(body)
            parsed = parse_combined(result.content, ids, result.finish_reason)
            for pid, v in parsed.items():  # a good verdict from an earlier attempt is kept
                if isinstance(v, Verdict) or not isinstance(best.get(pid), Verdict):
                    best[pid] = v
            if all(isinstance(v, Verdict) for v in best.values()):
                return best, result, attempt
            log.warning("unusable combined answer policies=%s replica=%s attempt=%d", ids, result.replica, attempt)
        return best, result, self._max_attempts

    async def label(
        self,
        policy: Policy,
        *,
        event_id: str,
        content: str,
        source: SourceRef,
        metadata: dict[str, str] | None,
        started: float,
        key: bytes | None = None,
    ) -> Outcome:
        """Label one event for one policy. ``started`` is the ``time.monotonic()`` of consumption.

        With a dedupe cache, identical content already decided under the same policy version, model
        and effort is labelled from the cache (``decided_by: cache``, zero token usage). ``key`` is
        the cache key when the caller already computed it (:meth:`from_cache`).
        """
        cached = False
        try:
            if self._cache is None:
                decision = await self.decide(policy, content)
            else:
                decision, cached = await self._cache.get_or_compute(
                    key if key is not None else self.cache_key(policy, content), lambda: self.decide(policy, content),
                    counted=key is not None)
        except PoisonError as exc:
            attempts = self._max_attempts if exc.error_type != "request_rejected" else 1
            return Outcome(policy=policy, failure=exc, attempts=attempts)
        usage = (0, 0) if cached else (decision.prompt_tokens, decision.completion_tokens)
        label = self._label(policy, decision.verdict, decision.reasoning, *usage, event_id=event_id, source=source,
                            metadata=metadata, started=started, decided_by="cache" if cached else "model")
        return Outcome(policy=policy, label=label, reasoning=decision.reasoning, attempts=decision.attempts)

    def cache_key(self, policy: Policy, content: str) -> bytes:
        return cache_key(content, policy.version, policy.id, self.model, policy.effort(self._default_effort))

    def from_cache(self, policy: Policy, *, event_id: str, content: str, source: SourceRef,
                   metadata: dict[str, str] | None, started: float) -> Outcome | bytes | None:
        """The label straight from the dedupe cache, without awaiting anything (the consumer's fast
        path: no task per event). Returns the cache key on a miss (pass it to :meth:`label`), None
        without a cache."""
        if self._cache is None:
            return None
        key = self.cache_key(policy, content)
        decision = self._cache.peek(key)
        if decision is None:
            return key
        label = self._label(policy, decision.verdict, decision.reasoning, 0, 0, event_id=event_id, source=source,
                            metadata=metadata, started=started, decided_by="cache")
        return Outcome(policy=policy, label=label, reasoning=decision.reasoning, attempts=decision.attempts)

    async def label_combined(
        self,
        policies: list[Policy],
        *,
        event_id: str,
        content: str,
        source: SourceRef,
        metadata: dict[str, str] | None,
        started: float,
    ) -> list[Outcome]:
        """Label one event for several policies with one request (``policies.mode: combined``).

        The request's token usage is split evenly over the labels so that summing ``usage`` over
        labels gives the real cost.
        """
        try:
            verdicts, result, attempts = await self.decide_combined(policies, content)
        except PoisonError as exc:  # request_rejected: the same for every policy
            return [Outcome(policy=p, failure=exc, attempts=1) for p in policies]
        k = len(policies)
        outcomes = []
        for i, p in enumerate(policies):
            v = verdicts[p.id]
            if isinstance(v, PoisonError):
                outcomes.append(Outcome(policy=p, failure=v, attempts=attempts))
                continue
            prompt = result.prompt_tokens // k + (result.prompt_tokens % k if i == 0 else 0)
            completion = result.completion_tokens // k + (result.completion_tokens % k if i == 0 else 0)
            label = self._label(p, v, result.reasoning, prompt, completion, event_id=event_id, source=source,
                                metadata=metadata, started=started)
            outcomes.append(Outcome(policy=p, label=label, reasoning=result.reasoning, attempts=attempts))
        return outcomes

    def _label(self, policy: Policy, v: Verdict, reasoning: str | None, prompt_tokens: int, completion_tokens: int,
               *, event_id: str, source: SourceRef, metadata: dict[str, str] | None, started: float,
               decided_by: str = "model") -> dict[str, Any]:
        return label_doc(
            event_id=event_id,
            policy_id=policy.id,
            policy_version=policy.version,
            violation=v.violation,
            category=v.category,
            rule_ids=v.rule_ids,
            confidence=v.confidence,
            rationale=v.rationale,
            reasoning=reasoning if self._inline else None,
            decided_by=decided_by,
            model=self.model,
            reasoning_effort=policy.effort(self._default_effort),
            topic=source[0],
            partition=source[1],
            offset=source[2],
            metadata=metadata,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
