"""The prefilters' live controllers (:mod:`streams.cascade.control`), one per loaded prefilter
file, with their metrics and log lines.

The scoring stage asks :meth:`LiveCascade.control` for a prefilter's controller (its threshold in
use, its drift state), reports the batch's scored and skipped pairs to it, and keeps it on each
pair; outputs report each sent pair's end (sent, audited, flagged, with the model's verdict) to
that same controller once the label is delivered. A new or replaced file gets a fresh controller,
and pairs scored by the old one report to the old one: evidence never outlives the weights it was
gathered on.
Per consumer process: each member of a group controls from the partitions it owns.
"""

from __future__ import annotations

import logging

from streams.cascade.control import Change, RecallControl
from streams.cascade.model import Prefilter
from streams.config import PrefilterSettings
from streams.ops.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_TARGET = 0.99  # for files trained before targets were stamped


class LiveCascade:
    """Controllers by policy id (the policy's current prefilter's)."""

    def __init__(self, settings: PrefilterSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._controls: dict[str, tuple[Prefilter, RecallControl]] = {}

    def control(self, model: Prefilter) -> RecallControl:
        """The controller of this prefilter (a fresh one when the policy's file changed)."""
        entry = self._controls.get(model.policy_id)
        if entry is not None and entry[0] is model:
            return entry[1]
        training = model.training or {}
        target = self._settings.target_recall or training.get("target_recall") or DEFAULT_TARGET
        coverage = training.get("coverage_p05")
        control = RecallControl(model.policy_id, model.threshold, float(target),
                                window=self._settings.evidence_window,
                                coverage_p05=float(coverage) if isinstance(coverage, int | float) else None,
                                enabled=self._settings.controller)
        self._controls[model.policy_id] = (model, control)
        log.info("prefilter control policy=%s version=%s threshold=%.4f target_recall=%.4f controller=%s drift=%s",
                 model.policy_id, model.policy_version, model.threshold, control.target,
                 "on" if control.enabled else "off", "on" if control.coverage_p05 is not None else "off (no "
                 "coverage_p05 in the file: train it again)")
        self._publish(model.policy_id, control)
        return control

    def evaluate(self, policy_id: str) -> None:
        """Let the policy's controller act on its evidence; log and publish what it did."""
        entry = self._controls.get(policy_id)
        if entry is None:
            return
        control = entry[1]
        change = control.evaluate()
        if change is not None:
            self._log(policy_id, control, change)
        if control.last is not None:
            self._publish(policy_id, control)

    def _log(self, policy_id: str, control: RecallControl, change: Change) -> None:
        b = change.bounds
        tightened = change.new < change.old
        log.log(logging.WARNING if tightened else logging.INFO,
                "prefilter %s policy=%s texts=%s threshold=%.4f->%.4f trained=%.4f reason=%r recall_lower_bound=%.4f "
                "recall_upper_bound=%.4f target=%.4f found=%.0f missed_seen=%d audited=%d audit_misses=%d "
                "unaudited_skipped=%d%s", "tightened" if tightened else "loosened", policy_id, change.texts,
                change.old, change.new,
                control.trained, change.reason, b.lower, b.upper, control.target, b.found, b.observed_missed,
                b.audited, b.audit_misses, b.unaudited_skipped,
                " (more pairs go to the model)" if tightened else " (the evidence certifies the target)")

    def _publish(self, policy_id: str, control: RecallControl) -> None:
        m = self._metrics
        m.prefilter_threshold.labels(policy_id).set(control.threshold)
        m.prefilter_novel_threshold.labels(policy_id).set(control.novel_threshold)
        m.prefilter_tightened.labels(policy_id).set(control.tightened_by)
        m.prefilter_drift.labels(policy_id).set(round(control.drift, 4))
        if control.last is not None:
            m.prefilter_recall_lower_bound.labels(policy_id).set(round(control.last.lower, 6))
