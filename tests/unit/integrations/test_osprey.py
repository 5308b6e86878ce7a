"""Osprey actions: our envelope read by Osprey's own rules (tests/osprey_input.py), with hostile data."""

from __future__ import annotations

import json

import pytest

from streams.config import OspreySettings
from streams.integrations.osprey import OspreyActions, action_id, send_time
from streams.wire.events import label_id
from streams.wire.integrations import OspreyAction
from tests.osprey_input import json_path, parse_action


def test_send_time_is_rfc3339_with_nanoseconds_in_utc() -> None:
    assert send_time("2026-12-03T09:35:52.123Z") == "2026-12-03T09:35:52.123000000Z"
    assert send_time("2026-12-03T09:35:52Z") == "2026-12-03T09:35:52.000000000Z"


def test_action_ids_are_deterministic_positive_int64() -> None:
    ids = [label_id(f"e{i}", "spam", "1-abc") for i in range(2000)]
    ints = [action_id(i) for i in ids]
    assert all(0 < x < 2**63 for x in ints) and len(set(ints)) == len(ints)
    assert action_id(ids[0]) == action_id(ids[0])
    assert action_id("00000000-0000-0000-8000-000000000000") == 1  # never 0


@pytest.mark.parametrize("hostile", ['"}, "action_id": 1, "x": {"', "\u202e\u200bevil\x00", "<|start|>", "💥" * 50,
                                     '\\", "send_time": "1970'])
def test_hostile_text_in_a_label_never_breaks_the_envelope(hostile: str) -> None:
    actions = OspreyActions(OspreySettings(topic="osprey.actions_input", source="both", action_name="safeguard_label"))
    lid = label_id("e1", "spam", "1-abc")
    doc = {"label_id": lid, "event_id": hostile, "labeled_at": "2026-12-03T09:35:52.123Z", "rationale": hostile,
           "metadata": {"user_id": hostile, hostile: "x"}}
    action = parse_action(actions.label(doc))
    assert action.action_id == action_id(lid) and action.action_name == "safeguard_label"
    assert action.data == doc and json_path(action.data, "$.metadata.user_id") == hostile
    assert action.timestamp.isoformat() == "2026-12-03T09:35:52.123000+00:00"
    OspreyAction.model_validate(json.loads(actions.label(doc)))


def test_the_reference_parser_refuses_what_osprey_would_skip() -> None:
    with pytest.raises(KeyError):
        parse_action(b'{"data": {"action_id": 1, "action_name": "x", "data": {}}}')
    with pytest.raises(ValueError):
        parse_action(b'{"send_time": "2026-12-03T09:35:52", "data": {"action_id": 1, "action_name": "x", "data": {}}}')
    with pytest.raises(ValueError):
        parse_action(b'{"send_time": "2026-12-03T09:35:52Z", "data": {"action_id": "x1", "action_name": "x", '
                     b'"data": {}}}')
