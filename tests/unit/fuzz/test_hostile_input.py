"""Property tests: hostile input never crashes the decoder or the verdict parsers.

Every input either parses or raises PoisonError with a stable error_type (which the pipeline turns
into a dead letter); nothing else may escape.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.errors import PoisonError
from streams.inference.verdict import Verdict, parse_combined, parse_verdict
from streams.wire.events import DEAD_LETTER_VALUE_LIMIT, ContentEvent, Source, dead_letter_for, decode_content

ERROR_TYPES = {"invalid_json", "schema_violation", "too_large"}
KEYS = ["event_id", "kind", "text", "messages", "policies", "metadata", "created_at", "role", "content", "x"]
WORDS = ["message", "chat", "review", "completion", "user", "tool", "2026-01-01T00:00:00Z"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=50),
                    st.sampled_from(WORDS))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=6)), max_leaves=25)
finite = st.recursive(  # what a JSON answer can hold (json.dumps would write inf as Infinity, not JSON)
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=50), st.sampled_from(WORDS)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children,
                                                                                max_size=6)), max_leaves=25)
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_decode(raw: bytes) -> None:
    try:
        ev = decode_content(raw, max_bytes=4096)
    except PoisonError as exc:
        assert exc.error_type in ERROR_TYPES and str(exc)
        return
    assert isinstance(ev, ContentEvent) and 1 <= len(ev.event_id) <= 256
    assert ev.messages if ev.kind == "chat" else ev.text is not None


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    check_decode(raw)


@FAST
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8))
def test_json_of_every_shape(doc: dict) -> None:
    check_decode(json.dumps(doc).encode())


@FAST
@given(st.text(max_size=200))
def test_text_that_is_almost_json(text: str) -> None:
    check_decode(text.encode("utf-8", "surrogatepass"))


@FAST
@given(st.text(max_size=300))
def test_verdict_parser_never_crashes(text: str) -> None:
    try:
        v = parse_verdict(text, "stop")
    except PoisonError as exc:
        assert exc.error_type == "unparseable_output"
        return
    assert isinstance(v, Verdict) and isinstance(v.violation, bool)


@FAST
@given(st.sampled_from("01"), st.from_regex(r"[A-Za-z0-9][^{}\n]{0,80}", fullmatch=True),
       st.sampled_from(["stop", "length", None]))
def test_a_digit_run_into_other_text_is_never_a_verdict(digit: str, rest: str, finish: str | None) -> None:
    """A random model's text that starts with 0 or 1 and goes on in the same word or line is not a
    binary answer (a binary answer is the whole token)."""
    with pytest.raises(PoisonError):
        parse_verdict(digit + rest, finish)


def check_verdict(v: Verdict) -> None:
    assert isinstance(v.violation, bool) and all(isinstance(r, str) for r in v.rule_ids)
    assert v.confidence in (None, "low", "medium", "high") and (v.category is None or isinstance(v.category, str))
    assert v.rationale is None or isinstance(v.rationale, str)


FRAMES = ["{}", "```json\n{}\n```", "Answer: {} done"]  # a JSON object the parsers must find
BROKEN = ["{}}", "{{}"]  # not a JSON object any more


@FAST
@given(finite, st.sampled_from(FRAMES + BROKEN))
def test_model_outputs_in_odd_shapes(value: object, frame: str) -> None:
    """Every field of the answer holds the same odd value. The single-policy parser gives a sane
    verdict or unparseable_output; the same object keyed by policy, as a combined answer, gives each
    policy exactly what the single parser gives the object alone, and a policy the answer leaves out
    (or a frame that is no JSON object) is unparseable for that policy alone."""
    obj = {"violation": value, "policy_category": value, "rule_ids": value, "rationale": value, "confidence": value}
    try:
        alone: Verdict | PoisonError = parse_verdict(json.dumps(obj))
    except PoisonError as exc:
        alone = exc
    try:
        single: Verdict | PoisonError = parse_verdict(frame.replace("{}", json.dumps(obj), 1))
    except PoisonError as exc:
        single = exc
    combined = parse_combined(frame.replace("{}", json.dumps({"a": obj, "b": obj}), 1), ["a", "b", "c"])
    assert list(combined) == ["a", "b", "c"]
    for out in (single, *combined.values()):
        if isinstance(out, Verdict):
            check_verdict(out)
        else:
            assert out.error_type == "unparseable_output" and str(out)
    assert isinstance(combined["c"], PoisonError)
    if frame in FRAMES:
        assert "'c'" in str(combined["c"])  # the policy the answer leaves out, and only that one
        for pid in ("a", "b"):
            assert type(combined[pid]) is type(alone)
            assert combined[pid] == alone if isinstance(alone, Verdict) else True
        assert type(single) is type(alone) and (single == alone if isinstance(alone, Verdict) else True)
    else:
        assert all(isinstance(v, PoisonError) for v in combined.values())


@FAST
@given(st.binary(max_size=3 * DEAD_LETTER_VALUE_LIMIT))
def test_dead_letters_keep_originals_and_stay_small(value: bytes) -> None:
    dl = dead_letter_for(source=Source(topic="t", partition=0, offset=1), key=value[:10], value=value,
                         error_type="invalid_json", error="x")
    kept = base64.b64decode(dl.value or "")
    assert kept == value[:DEAD_LETTER_VALUE_LIMIT]
    assert dl.value_truncated is (len(value) > DEAD_LETTER_VALUE_LIMIT)
    assert len(dl.model_dump_json()) < 100_000
