"""Provisional decisions (docs/interventions.md, "Two-speed moderation"): the action for an event
before the model has answered, from what decode, routing and the prefilter already know.

Two consumers compute the same view of an event with no state shared between them: the provisional
consumer (``safeguard run --provisional``) to write the provisional decision, the reasoning
consumer to fill the final decision's ``supersedes`` and ``changed``. So the view reads only what
both derive from the record and the deployed files:

- the event's routed policies (shadow policies never act);
- which of them the prefilter decides, as its *file* says: no evasion flag, a score below the
  file's trained threshold, and not in the audit sample (deterministic from the label id at
  ``prefilter.audit_rate``). The live controller may hold a tighter threshold in one process than
  in the other, and drift audits depend on recent traffic; neither enters the view. A pair the
  view calls decided can still go to the model in the reasoning consumer (its final label then
  says what the model found, and the final decision follows it);
- the provisional rules (``actions.provisional.rules``), first match over the policies still
  pending.

An event with no pending policy gets no provisional decision (none is due: its final decision does
not wait for the model) and its final decision says ``supersedes: null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streams.config import ProvisionalRule, ProvisionalSettings
from streams.engine.work import Work
from streams.policy.model import Policy
from streams.wire.events import Stage, decision_document, decision_id, label_id, label_id_prefix


@dataclass(frozen=True, slots=True)
class View:
    """What is known of an event before the model: its provisional action and why."""

    action: str
    rule: int | None  # 1-based index in actions.provisional.rules; None: the default
    known: tuple[Policy, ...]  # decided by the prefilter ("no violation"), as its file says
    pending: tuple[Policy, ...]  # waiting for the model (never empty: else no view)
    decision_id: str


class ProvisionalRules:
    """The provisional view of events under ``actions.provisional`` and ``prefilter.audit_rate``."""

    def __init__(self, settings: ProvisionalSettings, audit_rate: float) -> None:
        self.settings = settings
        self._audit_below = int(audit_rate * 2**32)  # as the prefilter stage samples audits

    def view(self, work: Work) -> View | None:
        """The view of a decoded, routed (and prefiltered) event; None when no policy is pending."""
        event = work.event
        if event is None or work.failure is not None:
            return None
        known: list[Policy] = []
        pending: list[Policy] = []
        for policy in routed(work):
            if policy.meta.shadow:
                continue
            (known if self._prefilter_decides(work, policy) else pending).append(policy)
        if not pending:
            return None
        action, rule = self._first_match(work, pending)
        versions = {p.id: p.version for p in (*known, *pending)}
        return View(action, rule, tuple(known), tuple(pending), decision_id(event.event_id, versions, "provisional"))

    def document(self, work: Work, view: View) -> dict[str, Any]:
        """The provisional decision event (``reasons``: the policies the prefilter decided)."""
        return self._document(work, view, "provisional", view.action, view.rule)

    def deadline_document(self, work: Work, view: View) -> dict[str, Any]:
        """The deadline decision: ``deadline_s`` passed with the model still to answer, so
        ``on_deadline`` applies until the final decision (which still follows)."""
        action = self.settings.on_deadline
        assert action is not None
        return self._document(work, view, "deadline", action, None, supersedes=view.decision_id,
                              changed=action != view.action)

    def _document(self, work: Work, view: View, stage: Stage, action: str, rule: int | None,
                  supersedes: str | None = None, changed: bool = False) -> dict[str, Any]:
        assert work.event is not None
        event_id = work.event.event_id
        reasons = [{"policy_id": p.id, "policy_version": p.version, "violation": False, "category": None,
                    "confidence": None, "label_id": label_id(event_id, p.id, p.version), "decided_by": "prefilter"}
                   for p in view.known]
        versions = {p.id: p.version for p in (*view.known, *view.pending)}
        return decision_document(work, stage=stage, action=action, rule=rule, reasons=reasons, versions=versions,
                                 supersedes=supersedes, changed=changed, pending=[p.id for p in view.pending])

    def urgent(self, view: View | None) -> bool:
        """Whether the event's provisional action is one whose events go first to the replicas."""
        return view is not None and view.action in self.settings.urgent

    def _prefilter_decides(self, work: Work, policy: Policy) -> bool:
        scored = work.prefilter.get(policy.id) if work.prefilter else None
        if scored is None:
            return False
        score, _audited, flags, _novel, control = scored
        if flags or not score < control.trained:  # (a NaN score is never decided)
            return False
        assert work.event is not None
        return not (self._audit_below and label_id_prefix(work.event.event_id, policy.id, policy.version)
                    < self._audit_below)

    def _first_match(self, work: Work, pending: Sequence[Policy]) -> tuple[str, int | None]:
        assert work.event is not None
        for index, rule in enumerate(self.settings.rules, 1):
            if _matches(rule, work, pending):
                return rule.action, index
        return self.settings.default, None


def _matches(rule: ProvisionalRule, work: Work, pending: Sequence[Policy]) -> bool:
    assert work.event is not None
    return ((rule.kind is None or rule.kind == work.event.kind) and (rule.topic is None or rule.topic == work.tp[0])
            and (rule.policy is None or any(p.id == rule.policy for p in pending)))


def routed(work: Work) -> list[Policy]:
    """Every policy the event was routed to, whatever has become of it: decided (an outcome) or
    still to decide (a request). Both consumers see the same list at any stage."""
    seen: dict[str, Policy] = {}
    for outcome in work.outcomes:
        seen.setdefault(outcome.policy.id, outcome.policy)
    for request in work.requests:
        for policy in request.policies:
            seen.setdefault(policy.id, policy)
    return sorted(seen.values(), key=lambda p: p.id)
