"""Property tests: hostile input never crashes the decoder or the verdict parsers.

Every input either parses or raises PoisonError with a stable error_type (which the pipeline turns
into a dead letter); nothing else may escape.
"""

from __future__ import annotations

import base64
import json

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
@given(json_values, st.sampled_from(["{}", "```json\n{}\n```", "Answer: {} done", "{}}", "{{}"]))
def test_model_outputs_in_odd_shapes(value: object, frame: str) -> None:
    body = json.dumps({"violation": value, "policy_category": value, "rule_ids": value, "rationale": value,
                       "confidence": value})
    text = frame.replace("{}", body, 1)
    for parse in (lambda: parse_verdict(text), lambda: parse_combined(text, ["a", "b"])):
        try:
            out = parse()
        except PoisonError:
            continue
        if isinstance(out, Verdict):
            assert isinstance(out.violation, bool) and all(isinstance(r, str) for r in out.rule_ids)


@FAST
@given(st.binary(max_size=3 * DEAD_LETTER_VALUE_LIMIT))
def test_dead_letters_keep_originals_and_stay_small(value: bytes) -> None:
    dl = dead_letter_for(source=Source(topic="t", partition=0, offset=1), key=value[:10], value=value,
                         error_type="invalid_json", error="x")
    kept = base64.b64decode(dl.value or "")
    assert kept == value[:DEAD_LETTER_VALUE_LIMIT]
    assert dl.value_truncated is (len(value) > DEAD_LETTER_VALUE_LIMIT)
    assert len(dl.model_dump_json()) < 100_000
