from __future__ import annotations

import pytest

from streams.errors import PoisonError
from streams.inference.verdict import parse_verdict


@pytest.mark.parametrize(
    "content,violation",
    [
        ("1", True),
        ("0", False),
        ("  0\n", False),
        ('{"violation": 1, "policy_category": "H2.f"}', True),
        ('{"violation": 0, "policy_category": null}', False),
        ('```json\n{"violation": "1", "policy_category": "SP2"}\n```', True),
        ('Here is my answer: {"violation": true, "extra": [1, 2]} thanks', True),
        ('{"violation": "false"}', False),
        ("INVALID", True),
        ("VALID", False),
        ("INVALID + ESCALATE", True),
        ('{"label": 1}', True),
        ("**1**", True),
        ("`0`.", False),
        ("1\nThe text offers a cheat loader.", True),  # the whole first line, then an explanation
    ],
)
def test_accepted_shapes(content: str, violation: bool) -> None:
    assert parse_verdict(content).violation is violation


def test_full_json_fields() -> None:
    v = parse_verdict('{"violation": 1, "policy_category": "H2.f", "rule_ids": ["H2.d", "H2.f"], '
                      '"confidence": "High", "rationale": ["dehumanizing", "targets a group"]}')
    assert v.category == "H2.f" and v.rule_ids == ["H2.d", "H2.f"]
    assert v.confidence == "high"
    assert v.rationale == "dehumanizing\ntargets a group"


def test_odd_field_types_are_tolerated() -> None:
    v = parse_verdict('{"violation": 1, "category": "SP1", "rule_ids": "SP1", "confidence": "very"}')
    assert v.category == "SP1" and v.rule_ids == ["SP1"] and v.confidence is None


@pytest.mark.parametrize("content", ["maybe", "", "{\"violation\": 2}", "{\"policy_category\": \"x\"}",
                                     "10", "{\"violation\": [1]}",
                                     # seen from a random model on the real vLLM server: read as verdicts before
                                     "1st rule applies to the text", "0ne of the users",
                                     "1 apple and 2 pears", "0.5", "Valid point, the user asks", "VALIDATE",
                                     "invalid", "- 1"])
def test_unparseable(content: str) -> None:
    with pytest.raises(PoisonError) as exc:
        parse_verdict(content, "stop")
    assert exc.value.error_type == "unparseable_output"


def test_an_answer_cut_by_the_length_limit_is_never_read() -> None:
    for cut in ("1", '{"violation": 1, "policy_category": "GC1"}', "INVALID", "1st rule"):
        with pytest.raises(PoisonError) as exc:
            parse_verdict(cut, "length")
        assert exc.value.error_type == "truncated_reasoning"


def test_a_json_policy_reads_only_json() -> None:
    assert parse_verdict('{"violation": 0}', "stop", output="json").violation is False
    for plain in ("1", "INVALID", "0"):
        with pytest.raises(PoisonError) as exc:
            parse_verdict(plain, "stop", output="json")
        assert exc.value.error_type == "unparseable_output"
    assert parse_verdict('{"violation": 1}', "stop", output="binary").violation is True  # explicit JSON is fine


def test_truncated_reasoning() -> None:
    with pytest.raises(PoisonError) as exc:
        parse_verdict(None, "length")
    assert exc.value.error_type == "truncated_reasoning"
    with pytest.raises(PoisonError) as exc:
        parse_verdict(None, "stop")
    assert exc.value.error_type == "unparseable_output"


def test_combined_answers_per_policy() -> None:
    from streams.inference.verdict import Verdict, parse_combined

    answer = '```json\n{"spam": {"violation": 1, "policy_category": "SP1"}, "cheat": {"violation": 0}}\n```'
    out = parse_combined(answer, ["spam", "cheat", "missing"])
    assert isinstance(out["spam"], Verdict) and out["spam"].violation and out["spam"].category == "SP1"
    assert isinstance(out["cheat"], Verdict) and not out["cheat"].violation
    assert isinstance(out["missing"], PoisonError) and out["missing"].error_type == "unparseable_output"
    bad = parse_combined("1", ["a", "b"])
    assert all(isinstance(v, PoisonError) for v in bad.values())
    cut = parse_combined(None, ["a"], "length")
    assert isinstance(cut["a"], PoisonError) and cut["a"].error_type == "truncated_reasoning"
