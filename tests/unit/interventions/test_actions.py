"""Decisions: the first rule that matches one of the event's labels; else on_error when a policy
failed; else the default. Rules are checked at start-up."""

from __future__ import annotations

import pytest

from streams.config import ActionSettings, load_settings
from streams.errors import ConfigError
from streams.interventions.actions import check_rules, decide, rule_matches
from streams.wire.events import Reason, decision_id


def reason(policy: str = "spam", violation: bool | None = True, category: str | None = None,
           confidence: str | None = None) -> Reason:
    return Reason(policy_id=policy, policy_version="1-abcdef01", violation=violation, category=category,
                  confidence=confidence, label_id=None if violation is None else "l",
                  decided_by="dead_letter" if violation is None else "model")


ACTIONS = ActionSettings.model_validate({"topic": "d", "default": "allow", "on_error": "review", "rules": [
    {"policy": "fake-reviews", "violation": True, "confidence": ["high"], "action": "hide"},
    {"policy": "fake-reviews", "violation": True, "action": "review"},
    {"category": "SP3", "action": "block"},
    {"violation": True, "action": "flag"},
]})


@pytest.mark.parametrize("reasons,failed,expected", [
    ([reason("fake-reviews", confidence="high")], False, ("hide", 1)),
    ([reason("fake-reviews", confidence="low")], False, ("review", 2)),
    ([reason("fake-reviews", confidence=None)], False, ("review", 2)),  # no confidence stated: not "high"
    ([reason("spam", category="SP3")], False, ("block", 3)),
    ([reason("spam", category="SP1"), reason("fake-reviews", violation=False)], False, ("flag", 4)),
    ([reason("spam", False), reason("fake-reviews", False)], False, ("allow", None)),
    ([], False, ("allow", None)),
    # a failed policy: on_error, unless a rule matched another policy's label
    ([reason("spam", False), reason("fake-reviews", None)], True, ("review", None)),
    ([reason("spam", category="SP3"), reason("fake-reviews", None)], True, ("block", 3)),
    ([], True, ("review", None)),
])
def test_first_matching_rule_then_on_error_then_default(reasons, failed, expected) -> None:
    assert decide(ACTIONS, reasons, failed=failed) == expected


def test_rule_order_decides_between_two_matches() -> None:
    both = [reason("spam", category="SP3"), reason("fake-reviews", confidence="high")]
    assert decide(ACTIONS, both, failed=False) == ("hide", 1)  # rule 1 comes before rule 3


def test_a_dead_lettered_policy_matches_no_rule() -> None:
    rule = ActionSettings.model_validate({"rules": [{"violation": False, "action": "allow"}]}).rules[0]
    assert not rule_matches(rule, reason("spam", None))


def test_rules_are_validated_at_start_up(tmp_path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("actions:\n  rules:\n    - {action: hide}\n    - {violation: true, action: review}\n")
    with pytest.raises(ConfigError, match="rule 1 .* matches every event"):
        load_settings(bad)
    bad.write_text("actions:\n  rules:\n    - {violation: true, action: 'Hide it!'}\n")
    with pytest.raises(ConfigError, match="actions.rules.0.action"):
        load_settings(bad)
    bad.write_text("actions:\n  rules:\n    - {confidence: [certain], action: hide}\n")
    with pytest.raises(ConfigError, match="confidence"):
        load_settings(bad)
    with pytest.raises(ConfigError, match=r"actions.rules\[2\] names policy 'nope'"):
        check_rules(ActionSettings.model_validate({"rules": [{"policy": "spam", "action": "a"},
                                                             {"policy": "nope", "action": "b"}]}), ["spam"])
    with pytest.raises(ConfigError, match=r"actions.provisional.rules\[1\] names policy 'gone'"):
        check_rules(ActionSettings.model_validate({"topic": "d", "rules": [{"policy": "spam", "action": "a"}],
                                                   "provisional": {"rules": [{"policy": "gone", "action": "hold"}]}}),
                    ["spam"])


def test_decision_id_is_deterministic_from_the_event_and_the_policy_versions() -> None:
    a = decision_id("e1", {"spam": "1-aa", "fake": "2-bb"})
    assert a == decision_id("e1", {"fake": "2-bb", "spam": "1-aa"})  # order does not matter
    assert a != decision_id("e1", {"spam": "1-ab", "fake": "2-bb"}) != decision_id("e2", {"spam": "1-aa"})
