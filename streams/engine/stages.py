"""The stages before inference, each run over a whole poll batch.

``decode`` -> ``route`` -> (``prefilter``) -> ``dedupe``; the pipeline runs them in the order it is
given (:func:`streams.app.build_stages`), then hands every event that still has requests to the
inference stage (:mod:`streams.engine.dispatch`) and the others straight to outputs. A stage reads
and writes only the :class:`~streams.engine.work.Work` records: it may mark an event poison
(``failure``), add or remove the requests still to decide, or decide one itself (an
``outcome``), or defer it while a dependency is down (``deferred``: it waits, see
:mod:`streams.engine.waiting`). Delivery never sees a stage, so one is added by writing it here and
listing it. Stages skip events that are no longer open (:attr:`Work.open`). A stage that raises
anything else is run again one event at a time and the event that raised is dead-lettered as
``internal_error``: stages must therefore be idempotent.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from streams.cascade.live import LiveCascade
from streams.cascade.model import Prefilter as CascadeModel
from streams.cascade.normalise import prepare
from streams.cascade.registry import Prefilters
from streams.engine.work import Request, Work
from streams.errors import PoisonError, RetryableError
from streams.inference.labeler import Labeler, Outcome
from streams.inference.prompt import render_content
from streams.inference.verdict import Verdict
from streams.ops.metrics import Children, Metrics
from streams.policy.model import Policy
from streams.policy.registry import PolicyRegistry
from streams.wire.codec import Decoder
from streams.wire.events import label_id_prefix


class Stage(Protocol):
    """One step over a poll batch (synchronous: it must not wait on I/O)."""

    def __call__(self, batch: list[Work]) -> None: ...


class Decode:
    """Record value -> content event, and the text the model will read. Poison: ``invalid_json``,
    ``invalid_avro``, ``schema_violation``, ``too_large``. An unreachable Schema Registry defers the
    event (``deferred``): it waits for the registry instead of being dead-lettered."""

    def __init__(self, decoder: Decoder) -> None:
        self._decoder = decoder

    def __call__(self, batch: list[Work]) -> None:
        decode = self._decoder.decode
        for work in batch:
            try:
                work.event = event = decode(work.value, work.tp[0])
            except PoisonError as exc:
                work.failure = exc
                continue
            except RetryableError as exc:  # the registry holding the writer's schema is down: wait
                work.deferred = str(exc)
                continue
            work.content = render_content(event)


class Route:
    """Content event -> the requests to decide: one per policy it routes to, or (``mode:
    combined``) one for all acting policies together. Shadow policies always get their own request
    so they cannot change acting verdicts. Poison: ``unknown_policy``, ``no_policy``."""

    def __init__(self, policies: PolicyRegistry, mode: str) -> None:
        self._policies = policies
        self._combined = mode == "combined"

    def __call__(self, batch: list[Work]) -> None:
        for work in batch:
            event = work.event
            if event is None or work.failure is not None or work.deferred is not None:
                continue
            try:
                policies = self._policies.resolve(topic=work.tp[0], kind=event.kind, requested=event.policies)
            except PoisonError as exc:
                work.failure = exc
                continue
            work.requests = [Request(group) for group in self.groups(policies)]
            work.priority = self._policies.lane(work.tp[0], event.kind)

    def groups(self, policies: list[Policy]) -> list[list[Policy]]:
        if not self._combined:
            return [[p] for p in policies]
        acting = [p for p in policies if not p.meta.shadow]
        groups = [acting] if len(acting) > 1 else [[p] for p in acting]
        return groups + [[p] for p in policies if p.meta.shadow]


class Prefilter:
    """The cascade (:mod:`streams.cascade`): for each policy with a current prefilter, every pair of
    the batch is scored in one call, on the normalised text (:mod:`streams.cascade.normalise`; the
    model still reads the original). A pair whose text shows an evasion signal is never decided
    here: it goes to the model with its flags. Below the threshold in use (the controller's,
    :mod:`streams.cascade.live`; a novel text has a threshold of its own, at most the familiar
    one) the pair is decided here, "no violation" (``decided_by: prefilter``), unless it is
    sampled for audit (deterministic from its label id, at ``prefilter.audit_rate``, or
    ``prefilter.drift_audit_rate`` for a novel text while the traffic drifts), which sends it to
    the model like a pair at or above the threshold; the label of every scored pair carries its
    score. In combined mode a policy decided here leaves its group; the rest of the group is still
    asked together."""

    def __init__(self, prefilters: Prefilters, audit_rate: float, metrics: Metrics, live: LiveCascade, *,
                 drift_audit_rate: float = 0.0) -> None:
        self._prefilters = prefilters
        self._live = live
        self._audit_below = int(audit_rate * 2**32)  # a label id whose first 32 bits fall below: audited
        self._drift_below = max(self._audit_below, int(drift_audit_rate * 2**32))
        self._count = Children(metrics.prefilter_decisions)
        self._evasion = Children(metrics.prefilter_evasion)
        self._verdicts: dict[tuple[str, float], Verdict] = {}  # one shared "no violation" per prefilter

    def __call__(self, batch: list[Work]) -> None:
        scored: dict[str, tuple[CascadeModel, list[tuple[Work, Policy]]]] = {}
        for work in batch:
            if not work.open:
                continue
            for request in work.requests:
                for policy in request.policies:
                    entry = scored.get(policy.id)
                    if entry is None:
                        model = self._prefilters.current(policy)
                        if model is None:
                            continue
                        entry = scored[policy.id] = (model, [])
                    entry[1].append((work, policy))
        for policy_id, (model, pairs) in scored.items():
            self._score(policy_id, model, pairs)
            self._live.evaluate(policy_id)

    def _score(self, policy_id: str, model: CascadeModel, pairs: list[tuple[Work, Policy]]) -> None:
        control = self._live.control(model)
        prepared = [_normalised(work) for work, _ in pairs]
        scores, coverage = model.score_normalised([text for text, _ in prepared],
                                                  coverage=control.coverage_p05 is not None)
        novel = coverage < control.coverage_p05 if coverage is not None and control.coverage_p05 is not None \
            else np.zeros(len(pairs), dtype=bool)
        drifting = control.scored(novel)
        if not control.enabled:  # the drift is measured (the gauge), audits stay at audit_rate
            drifting = np.zeros(len(pairs), dtype=bool)
        threshold, novel_threshold = control.threshold, control.novel_threshold
        verdict = self._verdict(policy_id, threshold)
        novel_verdict = self._verdict(policy_id, novel_threshold)
        send_all_novel = self._drift_below >= 2**32  # drift_audit_rate 1: nothing is sampled, all are sent
        sent = audited = 0
        skipped: list[int] = []
        for i, ((work, policy), score, new, drift) in enumerate(zip(pairs, scores.tolist(), novel.tolist(),
                                                                    drifting.tolist(), strict=True)):
            flags = prepared[i][1]
            if work.prefilter is None:
                work.prefilter = {}
            if flags:
                work.prefilter[policy_id] = (score, False, flags, new, control)
                for flag in flags:
                    self._evasion(policy_id, flag).inc()
                sent += 1
            elif not score < (novel_threshold if new else threshold) or (new and drift and send_all_novel):
                work.prefilter[policy_id] = (score, False, flags, new, control)  # (a NaN score is never a skip)
                sent += 1
            elif self._audited(work, policy, self._drift_below if new and drift else self._audit_below):
                work.prefilter[policy_id] = (score, True, flags, new, control)
                audited += 1
            else:
                work.prefilter[policy_id] = (score, False, flags, new, control)
                skipped.append(i)
                self._decide(work, policy, novel_verdict if new else verdict)
        control.skipped(scores[skipped], novel[skipped])
        for outcome, count in (("sent", sent), ("audited", audited), ("skipped", len(skipped))):
            if count:
                self._count(policy_id, outcome).inc(count)

    def _verdict(self, policy_id: str, threshold: float) -> Verdict:
        verdict = self._verdicts.get((policy_id, threshold))
        if verdict is None:
            if len(self._verdicts) > 1000:  # prefilters come and go with live reloads
                self._verdicts.clear()
            rationale = f"decided by the prefilter: its score (prefilter_score) is below its threshold {threshold:.4f}"
            verdict = self._verdicts[(policy_id, threshold)] = Verdict(False, rationale=rationale)
        return verdict

    @staticmethod
    def _audited(work: Work, policy: Policy, below: int) -> bool:
        """Whether the label id's first 32 bits fall below ``below`` (the audit rate's share of 2**32)."""
        if not below:
            return False
        assert work.event is not None
        return label_id_prefix(work.event.event_id, policy.id, policy.version) < below

    @staticmethod
    def _decide(work: Work, policy: Policy, verdict: Verdict) -> None:
        work.outcomes.append(Outcome(policy, verdict, decided_by="prefilter"))
        kept = []
        for request in work.requests:
            if policy in request.policies:
                request.policies = [p for p in request.policies if p is not policy]
            if request.policies:
                kept.append(request)
        work.requests = kept


def _normalised(work: Work) -> tuple[str, tuple[str, ...]]:
    """The work's content normalised for scoring, and its evasion flags (once per event, whatever
    the number of policies scoring it)."""
    if work.normalised is None:
        work.normalised = prepare(work.content)
    return work.normalised


class Dedupe:
    """Single-policy requests whose content the dedupe cache has already decided become outcomes
    here, with no task and no await; a miss leaves its cache key on the request for inference."""

    def __init__(self, labeler: Labeler) -> None:
        self._labeler = labeler

    def __call__(self, batch: list[Work]) -> None:
        labeler = self._labeler
        for work in batch:
            if not work.open:
                continue
            still: list[Request] = []
            for request in work.requests:
                if len(request.policies) == 1:
                    policy = request.policies[0]
                    key = labeler.cache_key(policy, work.content)
                    assert key is not None  # the stage is listed only with a cache
                    hit = labeler.cached(policy, key)
                    if hit is not None:
                        work.outcomes.append(hit)
                        continue
                    request.cache_key = key
                still.append(request)
            work.requests = still
