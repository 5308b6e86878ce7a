"""The provisional consumer's parts (``safeguard run --provisional``): the same poll loop, stages and
delivery as the reasoning consumer, with no model behind them.

``decode -> route -> (prefilter) -> settle``: the ``settle`` stage takes the event's provisional
view (:mod:`streams.interventions.provisional`) and closes its requests, so the pipeline hands
every event straight to :class:`ProvisionalOutputs`, which writes its provisional decision. The
events it cannot decode it skips: the reasoning consumer dead-letters them (one dead letter per bad
record, not two). It reads the content topics in its own group (``<kafka.group_id>-provisional``),
so it keeps up with the input whatever the replicas' backlog, and commits once its decisions are
acknowledged, under ``delivery`` like the reasoning consumer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from streams.config import Settings
from streams.engine.work import OutRecord, Work
from streams.errors import PoisonError
from streams.integrations.osprey import osprey_actions
from streams.interventions.provisional import ProvisionalRules, View
from streams.ops.logutil import RateLimitedLog
from streams.ops.metrics import Children, Metrics
from streams.wire.catalogue import DEAD_LETTER, PROVISIONAL_DECISION
from streams.wire.codec import Encoder
from streams.wire.events import Source, dead_letter_for

log = logging.getLogger(__name__)


class Settle:
    """The last stage of the provisional consumer: the event's view, then nothing left to decide."""

    def __init__(self, rules: ProvisionalRules) -> None:
        self._rules = rules

    def __call__(self, batch: list[Work]) -> None:
        for work in batch:
            if not work.open:  # failed, waiting, or settled already (a stage re-run): nothing to do
                continue
            work.provisional = self._rules.view(work)
            work.requests = []


class ProvisionalOutputs:
    """One provisional decision per event with a pending policy (on ``actions.topic``)."""

    def __init__(self, settings: Settings, rules: ProvisionalRules, encoder: Encoder, metrics: Metrics) -> None:
        self._topic = PROVISIONAL_DECISION.topic(settings)
        self._dlq = DEAD_LETTER.topic(settings)
        self._rules = rules
        self._encode = encoder.encode
        self._count = Children(metrics.decisions)
        self._latency = metrics.decision_latency.labels("provisional")
        self._dead_count = Children(metrics.dead_letters)
        self._skip_log = RateLimitedLog(log, 30.0)
        self._osprey = osprey_actions(settings.integrations.osprey)
        for action in {rules.settings.default, *(r.action for r in rules.settings.rules)}:
            self._count(action)  # at 0 from the start: rate() == 0 alerts need a series

    def build(self, work: Work) -> None:
        if work.failure is not None:
            self._skip_log.log(logging.INFO, work.failure.error_type, "no provisional decision topic=%s partition=%d "
                               "offset=%d error_type=%s (the reasoning consumer dead-letters it)", work.tp[0],
                               work.tp[1], work.offset, work.failure.error_type)
            return
        view: View | None = work.provisional
        if view is None:
            return  # nothing pending: the final decision does not wait for the model
        doc = self._rules.document(work, view)
        work.records.append(OutRecord(self._topic, self._encode(doc, PROVISIONAL_DECISION.schema, self._topic),
                                      self._counted(view.action, work.timestamp)))
        if self._osprey is not None and self._osprey.decisions:
            work.records.append(OutRecord(self._osprey.topic, self._osprey.decision(doc)))

    def _counted(self, action: str, timestamp: float | None) -> Callable[[], None]:
        count = self._count(action).inc
        latency = self._latency

        def delivered() -> None:
            count()
            if timestamp is not None:
                latency.observe(max(0.0, time.time() - timestamp))
        return delivered

    def dead_letter(self, work: Work, exc: PoisonError, *, policy_id: str | None = None, attempts: int = 1) -> None:
        """A provisional decision that could not be built (a bug, or a record its schema cannot hold):
        the record, with why, on the dead-letter topic."""
        topic, partition = work.tp
        log.warning("dead letter (provisional) topic=%s partition=%d offset=%d error_type=%s error=%s", topic,
                    partition, work.offset, exc.error_type, exc)
        letter = dead_letter_for(source=Source(topic=topic, partition=partition, offset=work.offset), key=work.key,
                                 value=work.value, error_type=exc.error_type, error=f"provisional decision: {exc}",
                                 event_id=work.event.event_id if work.event is not None else None,
                                 policy_id=policy_id, attempts=attempts)
        work.records.append(OutRecord(self._dlq, self._encode(letter, DEAD_LETTER.schema, self._dlq),
                                      self._dead_count(exc.error_type).inc))


class NoReplicas:
    """The pipeline's view of replica capacity when there are none to pace (the provisional
    consumer): always healthy, never busy."""

    def __init__(self, slots: int) -> None:
        self._slots = slots

    @property
    def healthy_count(self) -> int:
        return 1

    @property
    def inflight(self) -> int:
        return 0

    @property
    def free_slots(self) -> int:
        return self._slots

    @property
    def waiting(self) -> int:
        return 0
