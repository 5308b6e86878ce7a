"""Outputs: the records an event produces, by topic, and the metrics they count once acknowledged."""

from __future__ import annotations

from typing import Any

import orjson

from streams.config import OutputSettings, SchemaRegistrySettings, Settings, load_settings
from streams.engine.outputs import Outputs
from streams.engine.work import Work
from streams.errors import ErrorType, PoisonError
from streams.inference.labeler import Outcome
from streams.inference.verdict import Verdict
from streams.ops.metrics import build_metrics
from streams.policy.model import STARTER_POLICIES, load_policies, parse_policy
from streams.wire.codec import Encoder
from streams.wire.events import ContentEvent

SPAM = load_policies(STARTER_POLICIES)["spam"]
SHADOW = parse_policy("---\nid: spam-v2\nshadow: true\n---\nbody\n")
KAFKA = {"labels_topic": "labels", "dead_letter_topic": "dlq", "reasoning_topic": "cot"}


def settings(**sections: Any) -> Settings:
    return load_settings(None, {"kafka": KAFKA, "replicas": {"model": "m"}, "policies": {"reasoning_effort": "low"},
                                **sections})


def outputs(reasoning: str = "inline") -> tuple[Outputs, Any]:
    metrics = build_metrics()
    out = Outputs(settings(output={"reasoning": reasoning}), Encoder(OutputSettings(), SchemaRegistrySettings()),
                  metrics)
    return out, metrics


def work(*outcomes: Outcome) -> Work:
    w = Work(("in", 2), 7, b"key", b'{"event_id": "e"}', 0.0, event=ContentEvent(event_id="e", text="t"))
    w.outcomes = list(outcomes)
    return w


def decoded(w: Work) -> list[tuple[str, dict[str, Any]]]:
    return [(r.topic, orjson.loads(r.value)) for r in w.records]


def sample(metrics: Any, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_labels_by_topic_with_reasoning_inline() -> None:
    out, metrics = outputs()
    w = work(Outcome(SPAM, Verdict(True, "SP2"), "cot", "model", 5, 6), Outcome(SHADOW, Verdict(False), "cot2"))
    out.build(w)
    [(t1, spam), (t2, shadow)] = decoded(w)
    assert (t1, t2) == ("labels", "labels.shadow")
    assert spam["reasoning"] == "cot" and spam["usage"] == {"prompt_tokens": 5, "completion_tokens": 6}
    assert spam["source"] == {"topic": "in", "partition": 2, "offset": 7} and shadow["policy_id"] == "spam-v2"
    assert sample(metrics, "safeguard_labels_produced_total", policy="spam", violation="true",
                  decided_by="model") == 0  # counted only once the broker acknowledges the record
    for rec in w.records:
        assert rec.count is not None
        rec.count()
    assert sample(metrics, "safeguard_labels_produced_total", policy="spam", violation="true",
                  decided_by="model") == 1


def test_separate_reasoning_goes_to_its_own_topic_and_none_drops_it() -> None:
    out, _ = outputs("separate")
    w = work(Outcome(SPAM, Verdict(True), "the chain of thought"))
    out.build(w)
    [(t1, label), (t2, record)] = decoded(w)
    assert (t1, t2) == ("labels", "cot") and label["reasoning"] is None
    assert record == {"label_id": label["label_id"], "event_id": "e", "policy_id": "spam",
                      "reasoning": "the chain of thought"}
    out, _ = outputs("none")
    w = work(Outcome(SPAM, Verdict(True), "cot"))
    out.build(w)
    assert [t for t, _ in decoded(w)] == ["labels"] and decoded(w)[0][1]["reasoning"] is None


def test_a_poison_event_is_one_dead_letter_with_its_original_bytes() -> None:
    out, metrics = outputs()
    w = Work(("in", 0), 3, b"k", b"\xff not json", 0.0, failure=PoisonError(ErrorType.INVALID_JSON, "not JSON"))
    out.build(w)
    [(topic, letter)] = decoded(w)
    assert topic == "dlq" and letter["error_type"] == "invalid_json" and letter["event_id"] is None
    assert letter["source"] == {"topic": "in", "partition": 0, "offset": 3} and letter["policy_id"] is None
    w.records[0].count()  # type: ignore[misc]
    assert sample(metrics, "safeguard_dead_letters_total", error_type="invalid_json") == 1


def test_one_policy_failing_dead_letters_that_policy_and_labels_the_others() -> None:
    out, _ = outputs()
    failure = PoisonError(ErrorType.UNPARSEABLE_OUTPUT, "no verdict (after 5 attempts)")
    w = work(Outcome(SPAM, Verdict(False)), Outcome(SHADOW, failure=failure, attempts=5))
    out.build(w)
    [(t1, _label), (t2, letter)] = decoded(w)
    assert (t1, t2) == ("labels", "dlq")
    assert (letter["policy_id"], letter["attempts"], letter["event_id"]) == ("spam-v2", 5, "e")


def test_every_configured_action_is_exported_at_zero_before_any_decision() -> None:
    """The DecisionsStalled alert compares rate(safeguard_decisions_total) with 0: without a series
    per action from the start, a consumer that never decides would never fire it."""
    metrics = build_metrics()
    actions = {"topic": "decisions", "default": "allow", "on_error": "review",
               "rules": [{"policy": "spam", "violation": True, "action": "remove"}]}
    Outputs(settings(actions=actions), Encoder(OutputSettings(), SchemaRegistrySettings()), metrics)
    exported = {s.labels["action"]: s.value for m in metrics.registry.collect() if m.name == "safeguard_decisions"
                for s in m.samples if s.name == "safeguard_decisions_total"}
    assert exported == {"allow": 0.0, "review": 0.0, "remove": 0.0}


def test_a_scored_pair_reports_its_end_to_its_controller_once_and_only_when_delivered(caplog) -> None:
    """A build retried (a Schema Registry outage clears the records and builds again) tells the
    prefilter's controller nothing; the delivered label tells it once, with the model's verdict."""
    from streams.cascade.control import RecallControl

    out, metrics = outputs()
    control = RecallControl("spam", 0.0, 0.99, enabled=False)  # measure only: a miss would move the threshold
    w = work(Outcome(SPAM, Verdict(True, "SP2"), "cot", "model", 5, 6))
    w.prefilter = {"spam": (-1.23456, True, (), False, control)}  # audited: the prefilter would have skipped it
    for _ in range(3):
        w.records.clear()
        out.build(w)
    [(_, label)] = decoded(w)
    assert label["prefilter_score"] == -1.2346 and label["audit"] is True and label["prefilter_flags"] == []
    control.evaluate(force=True)
    assert control.last is None  # nothing delivered, nothing observed
    assert sample(metrics, "safeguard_prefilter_audit_misses_total", policy="spam") == 0
    [rec] = w.records
    assert rec.count is not None
    rec.count()
    control.evaluate(force=True)
    assert control.last is not None and control.last.audit_misses == 1 and control.last.audited == 1
    assert sample(metrics, "safeguard_prefilter_audit_misses_total", policy="spam") == 1
    assert caplog.text.count("prefilter audit miss policy=spam label_id=" + label["label_id"]) == 1
