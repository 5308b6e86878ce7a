"""Provisional decisions: the view of an event before the model, the same in both consumers, and
the final decision's supersedes/changed filled from it."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import orjson
import pytest

from streams.config import OutputSettings, ProvisionalSettings, SchemaRegistrySettings, load_settings
from streams.engine.outputs import Outputs
from streams.engine.provisional import ProvisionalOutputs, Settle
from streams.engine.work import Request, Work
from streams.errors import ErrorType, PoisonError
from streams.inference.labeler import Outcome
from streams.inference.verdict import Verdict
from streams.interventions.provisional import ProvisionalRules
from streams.ops.metrics import build_metrics
from streams.policy.model import parse_policy
from streams.wire.codec import Encoder
from streams.wire.events import ContentEvent, DecisionEvent, decision_id, label_id, label_id_prefix

SPAM, FAKE = parse_policy("---\nid: spam\n---\nbody\n"), parse_policy("---\nid: fake\n---\nbody\n")
SHADOW = parse_policy("---\nid: spam-v2\nshadow: true\n---\nbody\n")
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


def control(trained: float = 0.0, live: float | None = None) -> Any:
    """The part of a prefilter's controller the view reads (the trained threshold), and a live one."""
    return SimpleNamespace(trained=trained, threshold=trained if live is None else live)


def work(*policies: Any, kind: str = "message", topic: str = "in", event_id: str = "e1",
         scores: dict[str, tuple[float, tuple[str, ...]]] | None = None, live: float | None = None) -> Work:
    """An event as the stages leave it, before inference: one request per policy, and the scores."""
    w = Work((topic, 0), 3, b"k", b"{}", time.monotonic(), event=ContentEvent(event_id=event_id, kind=kind, text="t"))
    w.requests = [Request([p]) for p in policies]
    if scores:
        w.prefilter = {pid: (score, False, flags, False, control(0.0, live)) for pid, (score, flags) in scores.items()}
    return w


def rules(**settings: Any) -> ProvisionalRules:
    return ProvisionalRules(ProvisionalSettings.model_validate(settings), audit_rate=0.0)


def test_every_routed_acting_policy_without_a_prefilter_is_pending_and_the_default_applies() -> None:
    view = rules().view(work(SPAM, FAKE, SHADOW))
    assert view is not None and view.action == "allow" and view.rule is None
    assert [p.id for p in view.pending] == ["fake", "spam"] and view.known == ()  # shadow never acts


def test_the_first_rule_matching_a_pending_policy_the_kind_or_the_topic_gives_the_action() -> None:
    r = rules(rules=[{"policy": "fake", "action": "hold"}, {"kind": "review", "action": "review"},
                     {"topic": "live", "action": "queue"}])
    assert (r.view(work(SPAM, FAKE)).action, r.view(work(SPAM, FAKE)).rule) == ("hold", 1)
    assert r.view(work(SPAM, kind="review")).rule == 2
    assert r.view(work(SPAM, topic="live")).rule == 3
    assert r.view(work(SPAM)).action == "allow"


def test_a_policy_the_prefilter_file_decides_is_known_not_pending() -> None:
    r = rules(rules=[{"policy": "spam", "action": "hold"}])
    decided = work(SPAM, FAKE, scores={"spam": (-2.0, ())})  # below the trained threshold 0.0
    view = r.view(decided)
    assert [p.id for p in view.known] == ["spam"] and [p.id for p in view.pending] == ["fake"]
    assert view.action == "allow"  # the spam rule matches pending policies only
    flagged = r.view(work(SPAM, scores={"spam": (-2.0, ("zero_width",))}))  # an evasion flag: the model decides
    assert flagged.action == "hold"
    assert r.view(work(SPAM, scores={"spam": (0.5, ())})).action == "hold"  # above: pending
    assert r.view(work(SPAM, scores={"spam": (float("nan"), ())})).action == "hold"  # NaN: never decided


def test_nothing_pending_means_no_provisional_decision() -> None:
    assert rules().view(work(SPAM, scores={"spam": (-3.0, ())})) is None
    assert rules().view(work(SHADOW)) is None
    poison = work(SPAM)
    poison.failure = PoisonError(ErrorType.UNKNOWN_POLICY, "x")
    assert rules().view(poison) is None


def test_the_view_ignores_the_live_threshold_and_follows_the_audit_sample() -> None:
    """The two consumers' controllers may hold different thresholds: the view reads the file's."""
    tightened = work(SPAM, scores={"spam": (-2.0, ())}, live=-5.0)  # the live controller would send it
    assert rules().view(tightened) is None
    audited_ids = [f"e{i}" for i in range(200) if label_id_prefix(f"e{i}", "spam", SPAM.version) < 2**31]
    r = ProvisionalRules(ProvisionalSettings(), audit_rate=0.5)
    assert r.view(work(SPAM, event_id=audited_ids[0], scores={"spam": (-2.0, ())})) is not None  # sampled: pending


def test_the_view_is_the_same_before_inference_and_once_every_label_is_known() -> None:
    """The provisional consumer sees requests; the reasoning consumer, at its final decision, sees
    only outcomes. Same policies, same view, same id."""
    r = rules(rules=[{"policy": "fake", "action": "hold"}])
    before = work(SPAM, FAKE, SHADOW, scores={"spam": (-2.0, ())})
    after = work(scores={"spam": (-2.0, ())})
    after.requests = []
    after.outcomes = [Outcome(SPAM, Verdict(False), decided_by="prefilter"), Outcome(FAKE, Verdict(True, "F1")),
                      Outcome(SHADOW, Verdict(True))]
    assert r.view(before) == r.view(after)


def test_the_provisional_document_is_valid_and_its_id_is_its_own() -> None:
    r = rules(rules=[{"policy": "fake", "action": "hold"}])
    w = work(SPAM, FAKE, scores={"spam": (-2.0, ())})
    view = r.view(w)
    doc = r.document(w, view)
    assert DecisionEvent.model_validate(doc).model_dump(mode="json") == doc
    assert doc["stage"] == "provisional" and doc["pending"] == ["fake"] and doc["action"] == "hold"
    assert doc["reasons"] == [{"policy_id": "spam", "policy_version": SPAM.version, "violation": False,
                               "category": None, "confidence": None, "label_id": label_id("e1", "spam", SPAM.version),
                               "decided_by": "prefilter"}]
    versions = {"spam": SPAM.version, "fake": FAKE.version}
    assert doc["decision_id"] == decision_id("e1", versions, "provisional") != decision_id("e1", versions)
    named: dict = {}
    fastavro.parse_schema(json.loads((SCHEMAS / "source.avsc").read_text()), named_schemas=named)
    schema = fastavro.parse_schema(json.loads((SCHEMAS / "decision.avsc").read_text()), named_schemas=named)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, doc)
    buf.seek(0)
    assert fastavro.schemaless_reader(buf, schema) == doc


def outputs(provisional: dict[str, Any] | None) -> tuple[Outputs, Any]:
    metrics = build_metrics()
    actions: dict[str, Any] = {"topic": "decisions", "rules": [{"violation": True, "action": "remove"}]}
    if provisional is not None:
        actions["provisional"] = provisional
    settings = load_settings(None, {"actions": actions})
    return Outputs(settings, Encoder(OutputSettings(), SchemaRegistrySettings()), metrics), metrics


def decided(*outcomes: Outcome) -> Work:
    w = work()
    w.requests, w.outcomes, w.timestamp = [], list(outcomes), time.time() - 2.0
    return w


@pytest.mark.parametrize("verdict,changed", [(True, True), (False, False)])
def test_the_final_decision_supersedes_the_provisional_and_says_whether_the_action_changed(verdict: bool,
                                                                                           changed: bool) -> None:
    out, metrics = outputs({"default": "allow"})
    w = decided(Outcome(SPAM, Verdict(verdict)))
    out.build(w)
    doc = orjson.loads(w.records[-1].value)
    assert doc["stage"] == "final" and doc["changed"] is changed
    assert doc["supersedes"] == decision_id("e1", {"spam": SPAM.version}, "provisional")
    assert doc["decision_id"] == decision_id("e1", {"spam": SPAM.version})
    for record in w.records:
        if record.count is not None:
            record.count()
    sample = metrics.registry.get_sample_value
    assert sample("safeguard_interventions_total", {"from_action": "allow", "to_action": "remove"}) == (
        1.0 if changed else None)
    assert sample("safeguard_decision_latency_seconds_count", {"stage": "final"}) == 1.0
    assert sample("safeguard_decision_latency_seconds_sum", {"stage": "final"}) >= 2.0


def test_without_provisional_rules_or_with_nothing_pending_a_final_decision_supersedes_nothing() -> None:
    for provisional, scores in ((None, None), ({"default": "hold"}, {"spam": (-2.0, ())})):
        out, _ = outputs(provisional)
        w = decided(Outcome(SPAM, Verdict(False), decided_by="prefilter"))
        w.prefilter = {pid: (s, False, f, False, control()) for pid, (s, f) in (scores or {}).items()} or None
        out.build(w)
        doc = orjson.loads(w.records[-1].value)
        assert (doc["supersedes"], doc["changed"], doc["stage"]) == (None, False, "final")


def test_the_provisional_consumer_writes_one_decision_per_event_with_a_pending_policy() -> None:
    settings = load_settings(None, {"actions": {"topic": "decisions", "provisional": {
        "rules": [{"policy": "fake", "action": "hold"}]}}})
    metrics = build_metrics()
    r = ProvisionalRules(settings.actions.provisional, 0.0)
    out = ProvisionalOutputs(settings, r, Encoder(OutputSettings(), SchemaRegistrySettings()), metrics)
    pending, settled, poison = work(FAKE), work(SPAM, scores={"spam": (-1.0, ())}), work(SPAM)
    poison.failure = PoisonError(ErrorType.INVALID_JSON, "x")
    Settle(r)([pending, settled, poison])
    assert not pending.open and pending.requests == []
    for w in (pending, settled, poison):
        out.build(w)
    assert [r.topic for r in pending.records] == ["decisions"] and settled.records == [] and poison.records == []
    doc = orjson.loads(pending.records[0].value)
    assert (doc["stage"], doc["action"], doc["rule"]) == ("provisional", "hold", 1)
    Settle(r)([pending])  # a stage run again (the pipeline re-runs a batch one event at a time): no change
    assert pending.provisional is not None
    out.dead_letter(pending, PoisonError(ErrorType.INTERNAL_ERROR, "boom"))
    letter = orjson.loads(pending.records[-1].value)
    assert pending.records[-1].topic == "safeguard.dlq" and letter["error"] == "provisional decision: boom"
