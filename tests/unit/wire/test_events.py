from __future__ import annotations

import base64
import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.errors import PoisonError
from streams.wire.events import (
    DEAD_LETTER_VALUE_LIMIT,
    LABEL_NAMESPACE,
    Source,
    dead_letter_for,
    decode_content,
    label_id,
    label_id_prefix,
    utc_now,
)

MAX = 1_048_576


def decode(doc: object) -> object:
    return decode_content(orjson.dumps(doc), max_bytes=MAX)


def error_type(raw: bytes | None, max_bytes: int = MAX) -> str:
    with pytest.raises(PoisonError) as exc:
        decode_content(raw, max_bytes=max_bytes)
    return exc.value.error_type


def test_valid_message_defaults_kind() -> None:
    ev = decode({"event_id": "e1", "text": "hi", "extra_field": 1})
    assert ev.kind == "message" and ev.text == "hi"


def test_chat_needs_messages_not_text() -> None:
    ev = decode({"event_id": "c", "kind": "chat", "messages": [{"role": "user", "content": "x"}]})
    assert ev.messages and ev.messages[0].role == "user"
    assert error_type(orjson.dumps({"event_id": "c", "kind": "chat", "text": "x"})) == "schema_violation"


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b"[1, 2]", "schema_violation"),
        (orjson.dumps({"event_id": "x"}), "schema_violation"),  # missing text
        (orjson.dumps({"event_id": "x", "kind": "tweet", "text": "t"}), "schema_violation"),  # unknown kind
        (orjson.dumps({"event_id": "", "text": "t"}), "schema_violation"),
        (orjson.dumps({"event_id": "x" * 257, "text": "t"}), "schema_violation"),
        (orjson.dumps({"event_id": "x", "text": "t", "created_at": "yesterday"}), "schema_violation"),
        (orjson.dumps({"event_id": "x", "text": "t", "metadata": {"a": 1}}), "schema_violation"),
        (orjson.dumps({"event_id": "x", "kind": "chat", "messages": [{"role": "bot", "content": "c"}]}),
         "schema_violation"),
        (None, "schema_violation"),
    ],
)
def test_poison_inputs_get_stable_error_types(raw: bytes | None, expected: str) -> None:
    assert error_type(raw) == expected


def test_too_large_checked_before_parsing() -> None:
    raw = orjson.dumps({"event_id": "big", "text": "a" * 2000})
    assert error_type(raw, max_bytes=1000) == "too_large"


def test_dead_letter_keeps_original_bytes() -> None:
    dl = dead_letter_for(source=Source(topic="t", partition=1, offset=7), key=b"k", value=b"\xffbad",
                         error_type="invalid_json", error="nope")
    assert base64.b64decode(dl.value or "") == b"\xffbad"
    assert base64.b64decode(dl.key or "") == b"k"
    assert not dl.value_truncated
    assert dl.schema_version == 1 and dl.failed_at.endswith("Z")


def test_dead_letter_truncates_oversize_with_hash() -> None:
    value = b"x" * (2 * 1024 * 1024)
    dl = dead_letter_for(source=Source(topic="t", partition=0, offset=0), key=None, value=value,
                         error_type="too_large", error="big")
    assert dl.value_truncated
    assert len(base64.b64decode(dl.value or "")) == DEAD_LETTER_VALUE_LIMIT
    assert dl.value_sha256 == hashlib.sha256(value).hexdigest()
    assert len(dl.model_dump_json()) < 200_000  # always fits under the broker's message size


@pytest.mark.parametrize("event_id", ["e1", "b123", "ünïcode-ключ", "x" * 256, "a\x1fb"])
def test_label_id_is_uuid5_of_the_triple(event_id: str) -> None:
    name = f"{event_id}\x1fspam\x1f1-abcdef01"
    assert label_id(event_id, "spam", "1-abcdef01") == str(uuid.uuid5(LABEL_NAMESPACE, name))
    assert label_id_prefix(event_id, "spam", "1-abcdef01") == int(label_id(event_id, "spam", "1-abcdef01")[:8], 16)


def test_utc_now_is_rfc3339_milliseconds() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=2)
    stamp = utc_now()
    after = datetime.now(UTC) + timedelta(milliseconds=2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after


def test_label_id_is_deterministic_and_version_sensitive() -> None:
    a = label_id("e1", "spam", "1-abcdef01")
    assert a == label_id("e1", "spam", "1-abcdef01")
    assert a != label_id("e1", "spam", "2-abcdef01")
    assert a != label_id("e2", "spam", "1-abcdef01")
