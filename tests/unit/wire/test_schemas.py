"""schemas/*.avsc mirror the wire models: same fields, and real events round-trip through them."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import fastavro
import orjson
import pytest

from streams.engine.work import Work
from streams.errors import ErrorType
from streams.inference.labeler import Outcome
from streams.inference.verdict import Verdict
from streams.policy.model import parse_policy
from streams.wire.catalogue import CATALOGUE  # noqa: E402
from streams.wire.events import (
    ContentEvent,
    DecisionEvent,
    EscalationEvent,
    LabelEvent,
    Source,
    Usage,
    dead_letter_for,
    label_document,
    label_id,
)

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


def parsed() -> dict[str, dict]:
    named: dict = {}
    fastavro.parse_schema(json.loads((SCHEMAS / "source.avsc").read_text()), named_schemas=named)
    out = {}
    for name in ("content", "label", "reasoning", "dead_letter", "decision", "escalation", "review"):
        out[name] = fastavro.parse_schema(json.loads((SCHEMAS / f"{name}.avsc").read_text()), named_schemas=named)
    return out


def roundtrip(schema: dict, record: dict) -> dict:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, schema)


@pytest.mark.parametrize("name,model", [("content", ContentEvent)] + list(dict.fromkeys((k.schema, k.model)
                                                                                         for k in CATALOGUE
                                                                                         if not k.foreign)))
def test_fields_match_models(name: str, model: type) -> None:
    doc = json.loads((SCHEMAS / f"{name}.avsc").read_text())
    assert [f["name"] for f in doc["fields"]] == list(model.model_fields)


def test_events_roundtrip() -> None:
    schemas = parsed()
    label = LabelEvent(label_id="l", event_id="e", policy_id="spam", policy_version="1-abcdef01", violation=True,
                       category="SP1", rule_ids=["SP1"], confidence="high", rationale="r", reasoning="cot",
                       model="m", reasoning_effort="low", source=Source(topic="t", partition=0, offset=5),
                       metadata={"a": "b"}, latency_ms=12.5, usage=Usage(prompt_tokens=3, completion_tokens=4))
    doc = label.model_dump(mode="json")
    assert roundtrip(schemas["label"], doc) == doc
    dl = dead_letter_for(source=Source(topic="t", partition=1, offset=2), key=b"k", value=b"v",
                         error_type=ErrorType.INVALID_JSON, error="bad").model_dump(mode="json")
    assert roundtrip(schemas["dead_letter"], dl) == dl
    ev = ContentEvent.model_validate({"event_id": "c", "kind": "chat",
                                      "messages": [{"role": "user", "content": "hi"}]}).model_dump(mode="json")
    assert roundtrip(schemas["content"], ev) == ev


@pytest.mark.parametrize("metadata,confidence,reasoning", [({"a": "b"}, "high", "cot"), (None, None, None)])
def test_label_doc_is_what_the_model_dumps(metadata: dict | None, confidence: str | None,
                                           reasoning: str | None) -> None:
    """The consumer's pydantic-free label builder: valid, same keys in the same order, same values."""
    event = ContentEvent(event_id="e", text="hello", metadata=metadata)
    work = Work(("t", 0), 5, None, None, consumed_at=time.monotonic(), event=event)
    policy = parse_policy("---\nid: spam\n---\nbody\n")
    verdict = Verdict(violation=True, category="SP1", rule_ids=["SP1"], confidence=confidence, rationale="r")
    outcome = Outcome(policy, verdict, reasoning, "cache", 3, 4)
    doc = label_document(work, outcome, model="m", effort="low", inline_reasoning=True,
                         now=work.consumed_at + 0.0125)
    assert doc["latency_ms"] == 12.5 and doc["policy_version"] == policy.version
    model = LabelEvent.model_validate(doc)
    assert model.model_dump(mode="json") == doc
    assert list(model.model_dump(mode="json")) == list(doc)
    assert json.loads(model.model_dump_json()) == json.loads(orjson.dumps(doc))
    assert roundtrip(parsed()["label"], doc) == doc
    assert doc["label_id"] == label_id("e", "spam", policy.version)


def test_the_decision_the_output_stage_builds_is_valid_and_round_trips() -> None:
    from streams.config import OutputSettings, SchemaRegistrySettings, load_settings
    from streams.engine.outputs import Outputs
    from streams.errors import PoisonError
    from streams.ops.metrics import build_metrics
    from streams.wire.codec import Encoder

    rules = [{"violation": True, "action": "hide"}]
    settings = load_settings(None, {"actions": {"topic": "decisions", "rules": rules}})
    outputs = Outputs(settings, Encoder(OutputSettings(), SchemaRegistrySettings()), build_metrics())
    event = ContentEvent(event_id="e", text="hello", metadata={"author_id": "a1"})
    work = Work(("t", 0), 5, b"k", None, consumed_at=time.monotonic(), event=event)
    spam, fake = parse_policy("---\nid: spam\n---\nbody\n"), parse_policy("---\nid: fake\n---\nbody\n")
    work.outcomes = [Outcome(spam, Verdict(violation=True, category="SP1", confidence="high")),
                     Outcome(fake, None, failure=PoisonError(ErrorType.UNPARSEABLE_OUTPUT, "no"))]
    outputs.build(work)
    assert [r.topic for r in work.records][-1] == "decisions"
    doc = orjson.loads(work.records[-1].value)
    assert doc["action"] == "hide" and doc["rule"] == 1
    assert [r["decided_by"] for r in doc["reasons"]] == ["model", "dead_letter"]
    assert DecisionEvent.model_validate(doc).model_dump(mode="json") == doc
    assert roundtrip(parsed()["decision"], doc) == doc
    escalation = EscalationEvent(escalation_id="x", actor="a1", policy_id="spam", count=3, threshold=3,
                                 window_start="2026-12-01T00:00:00.000Z", window_end="2026-12-02T00:00:00.000Z",
                                 event_ids=["e1", "e2", "e3"]).model_dump(mode="json")
    assert roundtrip(parsed()["escalation"], escalation) == escalation


def test_a_review_event_round_trips_through_its_avro_schema() -> None:
    from streams.wire.integrations import ReviewEvent, ReviewPolicy, review_id

    review = ReviewEvent(review_id=review_id(b'{"item":{"id":"e1"}}'), event_id="e1", action="act-1",
                         policies=[ReviewPolicy(id="p1", name="Spam", penalty="MEDIUM"),
                                   ReviewPolicy(id="p2", name="Other")], actor=None)
    doc = review.model_dump(mode="json")
    assert roundtrip(parsed()["review"], doc) == doc
