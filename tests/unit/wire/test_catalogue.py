"""The output catalogue: which topics each service writes, and which schemas it registers, per settings."""

from __future__ import annotations

from typing import Any

import pytest

from streams.config import Settings, load_settings
from streams.wire.catalogue import CATALOGUE, DECISION, PROVISIONAL_DECISION, output_topics, subjects, written

KAFKA = {"labels_topic": "labels", "dead_letter_topic": "dlq", "reasoning_topic": "cot"}


def settings(**sections: Any) -> Settings:
    return load_settings(None, {"kafka": KAFKA, **sections})


def test_the_reasoning_consumer_writes_labels_and_dead_letters_at_least() -> None:
    assert output_topics(settings()) == ["labels", "dlq"]
    assert subjects(settings()) == {"label": ["labels"], "dead_letter": ["dlq"]}


def test_each_setting_adds_its_kind() -> None:
    s = settings(output={"reasoning": "separate"}, actions={"topic": "decisions"})
    assert output_topics(s, shadow=True) == ["labels", "labels.shadow", "cot", "dlq", "decisions"]
    assert subjects(s, shadow=True) == {"label": ["labels", "labels.shadow"], "reasoning": ["cot"],
                                        "dead_letter": ["dlq"], "decision": ["decisions"]}


def test_provisional_decisions_are_written_by_their_own_consumer_only_when_configured() -> None:
    plain = settings(actions={"topic": "decisions"})
    assert output_topics(plain, writer="provisional") == ["dlq"]  # a decision it cannot build: dead-lettered
    two_speed = settings(actions={"topic": "decisions", "provisional": {"default": "allow"}})
    assert output_topics(two_speed, writer="provisional") == ["dlq", "decisions"]
    assert subjects(two_speed, writer="provisional") == {"dead_letter": ["dlq"], "decision": ["decisions"]}
    assert [k for k, _ in written(two_speed)] != [PROVISIONAL_DECISION]  # the reasoning consumer: its own rows
    assert DECISION in [k for k, _ in written(two_speed)]


def test_the_escalation_service_writes_escalations() -> None:
    assert output_topics(settings(escalation={"topic": "esc"}), writer="escalation") == ["esc"]


def test_a_kind_not_written_says_which_setting_decides() -> None:
    with pytest.raises(ValueError, match="actions.topic"):
        DECISION.topic(settings())


def test_every_row_has_a_schema_file_and_a_distinct_name() -> None:
    from streams.wire.codec import SCHEMAS

    assert len({k.name for k in CATALOGUE}) == len(CATALOGUE)
    for kind in CATALOGUE:
        # another tool's envelope (Osprey's) is JSON whatever output.format says: no Avro schema to register
        assert (SCHEMAS / f"{kind.schema}.avsc").is_file() != kind.foreign, kind


def test_osprey_actions_are_written_by_both_consumers_and_never_registered() -> None:
    s = settings(actions={"topic": "decisions", "provisional": {"default": "allow"}},
                 integrations={"osprey": {"topic": "osprey.actions_input", "source": "both"}})
    assert output_topics(s) == ["labels", "dlq", "decisions", "osprey.actions_input"]
    assert output_topics(s, writer="provisional") == ["dlq", "decisions", "osprey.actions_input"]
    assert "osprey_action" not in subjects(s) and "osprey_action" not in subjects(s, writer="provisional")
