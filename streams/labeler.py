"""From (policy, content) to a label: request, inference on the pool, verdict, label event.

Retries: infrastructure failures are retried inside the pool for as long as it takes. Unusable
answers (``unparseable_output``, ``truncated_reasoning``) are retried up to
``replicas.max_attempts`` times, since a new sample may parse; then the outcome is a failure that
the caller dead-letters. A request the replica rejects (``request_rejected``) is not retried.
Per-item failures are returned as data, never raised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from streams.errors import PoisonError
from streams.events import LabelEvent, Source, Usage, label_id
from streams.policies import Policy
from streams.prompt import build_request
from streams.replicas.pool import ReplicaPool
from streams.verdict import Verdict, parse_verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """Result of labelling one item against one policy: a label, or a failure to dead-letter."""

    policy: Policy
    label: LabelEvent | None = None
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
    ) -> None:
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

    async def label(
        self,
        policy: Policy,
        *,
        event_id: str,
        content: str,
        source: Source,
        metadata: dict[str, str] | None,
        started: float,
    ) -> Outcome:
        """Label one event for one policy. ``started`` is the ``time.monotonic()`` of consumption."""
        try:
            decision = await self.decide(policy, content)
        except PoisonError as exc:
            attempts = self._max_attempts if exc.error_type != "request_rejected" else 1
            return Outcome(policy=policy, failure=exc, attempts=attempts)
        v = decision.verdict
        label = LabelEvent(
            label_id=label_id(event_id, policy.id, policy.version),
            event_id=event_id,
            policy_id=policy.id,
            policy_version=policy.version,
            violation=v.violation,
            category=v.category,
            rule_ids=v.rule_ids,
            confidence=v.confidence,
            rationale=v.rationale,
            reasoning=decision.reasoning if self._inline else None,
            decided_by="model",
            model=self.model,
            reasoning_effort=policy.effort(self._default_effort),
            source=source,
            metadata=metadata or {},
            latency_ms=round((time.monotonic() - started) * 1000, 3),
            usage=Usage(prompt_tokens=decision.prompt_tokens, completion_tokens=decision.completion_tokens),
        )
        return Outcome(policy=policy, label=label, reasoning=decision.reasoning, attempts=decision.attempts)
