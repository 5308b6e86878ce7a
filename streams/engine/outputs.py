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
from typing import Any, Protocol

from streams.config import Settings
from streams.engine.work import OutRecord, Work
from streams.errors import PoisonError
from streams.inference.labeler import Outcome
from streams.integrations.coop import CoopRequests
from streams.integrations.osprey import osprey_actions
from streams.interventions.actions import decide
from streams.interventions.provisional import ProvisionalRules, View
from streams.ops.logutil import RateLimitedLog
from streams.ops.metrics import Children, Metrics
from streams.wire.catalogue import DEAD_LETTER, DECISION, LABEL, REASONING, SHADOW_LABEL
from streams.wire.codec import Encoder
from streams.wire.events import Reason, ReasoningRecord, Source, dead_letter_for, decision_document, label_document

log = logging.getLogger(__name__)


class OutputStage(Protocol):
    """What the pipeline asks of its outputs: an event's records, or its dead letter."""

    def build(self, work: Work) -> None: ...

    def dead_letter(self, work: Work, exc: PoisonError, *, policy_id: str | None = None, attempts: int = 1
                    ) -> None: ...


class Outputs:
    """Builds :attr:`Work.records`: each kind's topic from the output catalogue
    (:mod:`streams.wire.catalogue`), the configured model name and default effort for the labels."""

    def __init__(self, settings: Settings, encoder: Encoder, metrics: Metrics) -> None:
        self._labels, self._shadow = LABEL.topic(settings), SHADOW_LABEL.topic(settings)
        self._dlq, self._reasoning = DEAD_LETTER.topic(settings), REASONING.topic_of(settings)
        self._inline = settings.output.reasoning == "inline"
        self._encode = encoder.encode
        self._model = settings.replicas.model
        self._effort = settings.policies.reasoning_effort
        self._label_count = Children(metrics.labels_produced)
        self._dead_count = Children(metrics.dead_letters)
        self._audit_misses = Children(metrics.prefilter_audit_misses)
        self._dlq_log = RateLimitedLog(log, 1.0)
        self._decisions = DECISION.topic_of(settings)
        self._actions = settings.actions
        self._decision_count = Children(metrics.decisions)
        self._final_latency = metrics.decision_latency.labels("final")
        self._deadline_latency = metrics.decision_latency.labels("deadline")
        self._interventions = Children(metrics.interventions)
        self._osprey = osprey_actions(settings.integrations.osprey)
        coop = settings.integrations.coop
        self._coop_requests = CoopRequests(coop) if coop.url is not None else None
        provisional = settings.actions.provisional
        self._provisional = ProvisionalRules(provisional, settings.prefilter.audit_rate) if provisional else None
        if self._decisions is not None:  # every action at 0 from the start: rate() == 0 alerts need a series
            for action in {self._actions.default, self._actions.on_error, *(r.action for r in self._actions.rules)}:
                self._decision_count(action)

    def build(self, work: Work) -> None:
        """Append the event's records to ``work.records``: its labels and dead letters, then (with
        ``actions.topic``) its decision, then its Coop requests. Raises what encoding raises."""
        reasons: list[dict[str, Any]] | None = [] if self._decisions is not None else None
        if work.failure is not None:
            self.dead_letter(work, work.failure)
            if reasons is not None and work.event is not None:  # no policy, unknown policy: nothing decided
                self._coop(work, [], self._decision(work, reasons, failed=True))
            return
        now = time.monotonic()
        failed = False
        labels: list[dict[str, Any]] = []
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
                if not policy.meta.shadow:
                    labels.append(doc)
                if reasons is not None and not policy.meta.shadow:
                    reasons.append({"policy_id": doc["policy_id"], "policy_version": doc["policy_version"],
                                    "violation": doc["violation"], "category": doc["category"],
                                    "confidence": doc["confidence"], "label_id": doc["label_id"],
                                    "decided_by": doc["decided_by"]})
        decision = self._decision(work, reasons, failed=failed) if reasons is not None else None
        self._coop(work, labels, decision)

    def _coop(self, work: Work, labels: list[dict[str, Any]], decision: dict[str, Any] | None) -> None:
        if self._coop_requests is not None and work.event is not None:
            topic = self._coop_requests.topic
            work.records += [OutRecord(topic, value, key=key)
                             for key, value in self._coop_requests.build(work, labels, decision)]

    def _decision(self, work: Work, reasons: list[dict[str, Any]], *, failed: bool) -> dict[str, Any]:
        """The final decision; with ``actions.provisional``, what it supersedes and whether it
        changed the action (the provisional view recomputed: streams.interventions.provisional)."""
        assert self._decisions is not None and work.event is not None
        action, rule = decide(self._actions, [Reason.model_construct(**r) for r in reasons], failed=failed)
        view = self.view(work)
        changed = view is not None and view.action != action
        doc = decision_document(work, stage="final", action=action, rule=rule, reasons=reasons,
                                versions={r["policy_id"]: r["policy_version"] for r in reasons},
                                supersedes=view.decision_id if view is not None else None, changed=changed)
        topic = self._decisions
        work.records.append(OutRecord(topic, self._encode(doc, DECISION.schema, topic),
                                      self._decided(action, view.action if changed and view else None,
                                                    work.timestamp)))
        if self._osprey is not None and self._osprey.decisions:
            work.records.append(OutRecord(self._osprey.topic, self._osprey.decision(doc)))
        return doc

    def view(self, work: Work) -> View | None:
        """The event's provisional view (kept on the event once taken), or None: none due, or no
        ``actions.provisional``."""
        if self._provisional is None:
            return None
        if work.provisional is None:
            work.provisional = self._provisional.view(work)
        view: View | None = work.provisional
        return view

    def urgent(self, work: Work) -> bool:
        """The event's provisional action is one of ``actions.provisional.urgent``."""
        return self._provisional is not None and self._provisional.urgent(self.view(work))

    def deadline(self, work: Work) -> list[OutRecord]:
        """The event's deadline decision (``actions.provisional.deadline_s`` passed with the model
        still to answer) and its Osprey action, or nothing when none is due."""
        view = self.view(work)
        if view is None or self._provisional is None or self._decisions is None:
            return []
        doc = self._provisional.deadline_document(work, view)
        topic = self._decisions
        records = [OutRecord(topic, self._encode(doc, DECISION.schema, topic),
                             self._decided(doc["action"], view.action if doc["changed"] else None, work.timestamp,
                                           self._deadline_latency))]
        if self._osprey is not None and self._osprey.decisions:
            records.append(OutRecord(self._osprey.topic, self._osprey.decision(doc)))
        return records

    def _decided(self, action: str, provisional: str | None, timestamp: float | None, latency: Any = None
                 ) -> Callable[[], None]:
        """A final (or deadline) decision's metrics, counted once the broker acknowledges it."""
        count = self._decision_count(action).inc
        latency = latency or self._final_latency
        intervened = self._interventions(provisional, action).inc if provisional is not None else None

        def delivered() -> None:
            count()
            if intervened is not None:
                intervened()
            if timestamp is not None:
                latency.observe(max(0.0, time.time() - timestamp))
        return delivered

    def _label(self, work: Work, outcome: Outcome, now: float) -> dict[str, Any]:
        policy = outcome.policy
        doc = label_document(work, outcome, model=self._model, effort=policy.effort(self._effort),
                             inline_reasoning=self._inline, now=now)
        counter = self._label_count(policy.id, "true" if doc["violation"] else "false", outcome.decided_by)
        count = counter.inc
        if work.prefilter is not None and outcome.decided_by != "prefilter" and policy.id in work.prefilter:
            count = self._observed(work, outcome, doc, counter.inc)
        topic = self._shadow if policy.meta.shadow else self._labels
        work.records.append(OutRecord(topic, self._encode(doc, LABEL.schema, topic), count))
        if self._osprey is not None and self._osprey.labels and not policy.meta.shadow:
            work.records.append(OutRecord(self._osprey.topic, self._osprey.label(doc)))
        if self._reasoning is not None:
            record = ReasoningRecord(label_id=doc["label_id"], event_id=doc["event_id"], policy_id=policy.id,
                                     reasoning=outcome.reasoning)
            work.records.append(OutRecord(self._reasoning, self._encode(record, REASONING.schema, self._reasoning)))
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
        work.records.append(OutRecord(self._dlq, self._encode(letter, DEAD_LETTER.schema, self._dlq), counter.inc))
