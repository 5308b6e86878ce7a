"""Outputs: the records an event produces once everything about it is decided.

One label per decided policy (on ``kafka.labels_topic``, or ``<labels_topic>.shadow`` for shadow
policies), a reasoning record per label when ``output.reasoning`` is ``separate``, a dead
letter per failure: the event itself (poison input) or one policy's evaluation of it, and with
``actions.topic`` one decision (:mod:`streams.interventions.actions`), last, so that it is
acknowledged under the same delivery guarantee as the labels it summarises. Each record
carries the metric it counts once the broker acknowledges it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streams.config import ActionSettings, KafkaSettings, OutputSettings
from streams.engine.work import OutRecord, Work
from streams.errors import PoisonError
from streams.inference.labeler import Outcome
from streams.interventions.actions import decide
from streams.ops.logutil import RateLimitedLog
from streams.ops.metrics import Children, Metrics
from streams.wire.codec import Encoder
from streams.wire.events import (
    SCHEMA_VERSION,
    Reason,
    ReasoningRecord,
    Source,
    dead_letter_for,
    decision_id,
    label_id,
    utc_now,
)

log = logging.getLogger(__name__)


def label_document(work: Work, outcome: Outcome, *, model: str, effort: str, inline_reasoning: bool,
                   now: float) -> dict[str, Any]:
    """The label event as the plain document :class:`~streams.wire.events.LabelEvent` dumps to
    (same keys, same order). A pydantic model would cost more than the rest of the label's work,
    and every value here is already typed by the code that made it (a unit test validates it)."""
    event, verdict, policy = work.event, outcome.verdict, outcome.policy
    assert event is not None and verdict is not None
    scored = work.prefilter.get(policy.id) if work.prefilter else None
    score, audit, flags = (round(scored[0], 4), scored[1], list(scored[2])) if scored is not None else (None, False, [])
    return {
        "schema_version": SCHEMA_VERSION,
        "label_id": label_id(event.event_id, policy.id, policy.version),
        "event_id": event.event_id,
        "policy_id": policy.id,
        "policy_version": policy.version,
        "violation": verdict.violation,
        "category": verdict.category,
        "rule_ids": verdict.rule_ids,
        "confidence": verdict.confidence,
        "rationale": verdict.rationale,
        "reasoning": outcome.reasoning if inline_reasoning else None,
        "decided_by": outcome.decided_by,
        "model": model,
        "reasoning_effort": effort,
        "source": {"topic": work.tp[0], "partition": work.tp[1], "offset": work.offset},
        "metadata": event.metadata or {},
        "latency_ms": round((now - work.consumed_at) * 1000, 3),
        "usage": {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens},
        "labeled_at": utc_now(),
        "prefilter_score": score,
        "audit": audit,
        "prefilter_flags": flags,
    }


class Outputs:
    """Builds :attr:`Work.records` (``kafka`` topics, ``output.reasoning``, the configured model
    name and default effort for the labels)."""

    def __init__(self, kafka: KafkaSettings, output: OutputSettings, encoder: Encoder, metrics: Metrics, *,
                 model: str, default_effort: str, actions: ActionSettings | None = None) -> None:
        self._labels, self._shadow = kafka.labels_topic, kafka.shadow_labels_topic
        self._dlq, self._reasoning = kafka.dead_letter_topic, kafka.reasoning_topic
        self._inline = output.reasoning == "inline"
        self._separate = output.reasoning == "separate"
        self._encode = encoder.encode
        self._model = model
        self._effort = default_effort
        self._label_count = Children(metrics.labels_produced)
        self._dead_count = Children(metrics.dead_letters)
        self._audit_misses = Children(metrics.prefilter_audit_misses)
        self._dlq_log = RateLimitedLog(log, 1.0)
        self._actions = actions if actions is not None and actions.topic else None
        self._decision_count = Children(metrics.decisions)
        if self._actions is not None:  # every action at 0 from the start: rate() == 0 alerts need a series
            for action in {self._actions.default, self._actions.on_error, *(r.action for r in self._actions.rules)}:
                self._decision_count(action)

    def build(self, work: Work) -> None:
        """Append the event's records to ``work.records``: its labels and dead letters, then (with
        ``actions.topic``) its decision. Raises what encoding raises."""
        reasons: list[dict[str, Any]] | None = [] if self._actions is not None else None
        if work.failure is not None:
            self.dead_letter(work, work.failure)
            if reasons is not None and work.event is not None:  # no policy, unknown policy: nothing decided
                self._decision(work, reasons, failed=True)
            return
        now = time.monotonic()
        failed = False
        for outcome in work.outcomes:
            policy = outcome.policy
            if outcome.failure is not None:
                self.dead_letter(work, outcome.failure, policy_id=policy.id, attempts=outcome.attempts)
                if reasons is not None and not policy.meta.shadow:
                    failed = True
                    reasons.append({"policy_id": policy.id, "policy_version": policy.version, "violation": None,
                                    "category": None, "confidence": None, "label_id": None,
                                    "decided_by": "dead_letter"})
            else:
                doc = self._label(work, outcome, now)
                if reasons is not None and not policy.meta.shadow:
                    reasons.append({"policy_id": doc["policy_id"], "policy_version": doc["policy_version"],
                                    "violation": doc["violation"], "category": doc["category"],
                                    "confidence": doc["confidence"], "label_id": doc["label_id"],
                                    "decided_by": doc["decided_by"]})
        if reasons is not None:
            self._decision(work, reasons, failed=failed)

    def _decision(self, work: Work, reasons: list[dict[str, Any]], *, failed: bool) -> None:
        assert self._actions is not None and self._actions.topic is not None and work.event is not None
        action, rule = decide(self._actions, [Reason.model_construct(**r) for r in reasons], failed=failed)
        event = work.event
        doc = {"schema_version": SCHEMA_VERSION,
               "decision_id": decision_id(event.event_id, {r["policy_id"]: r["policy_version"] for r in reasons}),
               "event_id": event.event_id, "action": action, "rule": rule, "reasons": reasons,
               "source": {"topic": work.tp[0], "partition": work.tp[1], "offset": work.offset},
               "metadata": event.metadata or {}, "decided_at": utc_now()}
        topic = self._actions.topic
        work.records.append(OutRecord(topic, self._encode(doc, "decision", topic), self._decision_count(action).inc))

    def _label(self, work: Work, outcome: Outcome, now: float) -> dict[str, Any]:
        policy = outcome.policy
        doc = label_document(work, outcome, model=self._model, effort=policy.effort(self._effort),
                             inline_reasoning=self._inline, now=now)
        counter = self._label_count(policy.id, "true" if doc["violation"] else "false", outcome.decided_by)
        count = counter.inc
        if work.prefilter is not None and outcome.decided_by != "prefilter" and policy.id in work.prefilter:
            count = self._observed(work, outcome, doc, counter.inc)
        topic = self._shadow if policy.meta.shadow else self._labels
        work.records.append(OutRecord(topic, self._encode(doc, "label", topic), count))
        if self._separate:
            record = ReasoningRecord(label_id=doc["label_id"], event_id=doc["event_id"], policy_id=policy.id,
                                     reasoning=outcome.reasoning)
            work.records.append(OutRecord(self._reasoning, self._encode(record, "reasoning", self._reasoning)))
        return doc

    def _observed(self, work: Work, outcome: Outcome, doc: dict[str, Any], count: Callable[[], None]
                  ) -> Callable[[], None]:
        """The label's count, which also tells the prefilter's controller how the scored pair ended
        (the model's verdict): once, when the label is delivered (a build retried during an outage,
        or an aborted transaction, tells it nothing)."""
        assert work.prefilter is not None
        score, audited, flags, novel, control = work.prefilter[outcome.policy.id]
        violation, policy_id = bool(doc["violation"]), outcome.policy.id
        kind = "flagged" if flags else "audited" if audited else "sent"
        label_id, event_id, (topic, partition), offset = doc["label_id"], doc["event_id"], work.tp, work.offset

        def delivered() -> None:
            count()
            if audited and violation:  # the prefilter would have let this violation through
                self._audit_misses(policy_id).inc()
                log.warning("prefilter audit miss policy=%s label_id=%s event_id=%s score=%.4f topic=%s "
                            "partition=%d offset=%d (a violation the prefilter would have decided; counted against "
                            "its recall)", policy_id, label_id, event_id, score, topic, partition, offset)
            if control is not None:
                control.outcome(score, kind, violation, novel=novel)
        return delivered

    def dead_letter(self, work: Work, exc: PoisonError, *, policy_id: str | None = None, attempts: int = 1) -> None:
        """Append a dead letter for the event (or for one policy's evaluation of it)."""
        topic, partition = work.tp
        self._dlq_log.log(logging.WARNING, exc.error_type,
                          "dead letter topic=%s partition=%d offset=%d error_type=%s policy=%s error=%s",
                          topic, partition, work.offset, exc.error_type, policy_id, exc)
        letter = dead_letter_for(source=Source(topic=topic, partition=partition, offset=work.offset), key=work.key,
                                 value=work.value, error_type=exc.error_type, error=str(exc),
                                 event_id=work.event.event_id if work.event is not None else None,
                                 policy_id=policy_id, attempts=attempts)
        counter = self._dead_count(exc.error_type)
        work.records.append(OutRecord(self._dlq, self._encode(letter, "dead_letter", self._dlq), counter.inc))
