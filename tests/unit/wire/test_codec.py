"""Decoder and Encoder in both formats; Avro against confluent-kafka's in-memory Schema Registry."""

from __future__ import annotations

import uuid

import orjson
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.config import InputSettings, OutputSettings, SchemaRegistrySettings
from streams.errors import ConfigError, ErrorType, PoisonError
from streams.wire.codec import Decoder, Encoder, registry_client, schema_str
from streams.wire.events import DeadLetter, Source, dead_letter_for


def registry() -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=f"mock://codec-{uuid.uuid4().hex[:8]}")


def content_avro(reg: SchemaRegistrySettings, doc: dict) -> bytes:
    ser = AvroSerializer(registry_client(reg.url), schema_str("content"))
    out = ser(doc, SerializationContext("in", MessageField.VALUE))
    assert out is not None
    return bytes(out)


def poison(decoder: Decoder, value: bytes | None) -> ErrorType:
    with pytest.raises(PoisonError) as exc:
        decoder.decode(value, "in")
    return exc.value.error_type


def test_json_decoding_names_what_is_wrong() -> None:
    d = Decoder(InputSettings(max_event_bytes=100), registry())
    assert d.decode(b'{"event_id": "a", "text": "hi"}', "in").text == "hi"
    assert poison(d, b"{nope") == ErrorType.INVALID_JSON
    assert poison(d, b'{"text": "no id"}') == ErrorType.SCHEMA_VIOLATION
    assert poison(d, None) == ErrorType.SCHEMA_VIOLATION
    assert poison(d, b"x" * 101) == ErrorType.TOO_LARGE


def test_avro_decoding_in_the_registry_wire_format() -> None:
    reg = registry()
    d = Decoder(InputSettings(format="avro", max_event_bytes=1000), reg)
    doc = {"event_id": "a1", "kind": "chat", "text": None, "messages": [{"role": "user", "content": "hello"}],
           "policies": None, "metadata": {"shop": "x"}, "created_at": None}
    event = d.decode(content_avro(reg, doc), "in")
    assert event.event_id == "a1" and event.messages is not None and event.messages[0].content == "hello"
    assert poison(d, b"\x00\x00\x00\x00\x07not avro") == ErrorType.INVALID_AVRO
    assert poison(d, b"plain json is not avro") == ErrorType.INVALID_AVRO
    assert poison(d, None) == ErrorType.SCHEMA_VIOLATION
    assert poison(d, b"\x00" * 1001) == ErrorType.TOO_LARGE
    chat_without_messages = dict(doc, messages=None)
    assert poison(d, content_avro(reg, chat_without_messages)) == ErrorType.SCHEMA_VIOLATION


def test_json_encoding_of_documents_and_models() -> None:
    e = Encoder(OutputSettings(), SchemaRegistrySettings())
    assert orjson.loads(e.encode({"a": 1}, "label", "labels")) == {"a": 1}
    letter = dead_letter_for(source=Source(topic="t", partition=0, offset=1), key=None, value=b"v",
                             error_type=ErrorType.TOO_LARGE, error="big")
    assert DeadLetter.model_validate_json(e.encode(letter, "dead_letter", "dlq")) == letter


def test_avro_encoding_registers_the_schema_and_round_trips() -> None:
    reg = registry()
    e = Encoder(OutputSettings(format="avro"), reg)
    letter = dead_letter_for(source=Source(topic="t", partition=0, offset=1), key=b"k", value=b"v",
                             error_type=ErrorType.INVALID_JSON, error="bad")
    raw = e.encode(letter, "dead_letter", "dlq")
    assert raw[0] == 0  # the registry wire format: magic byte, schema id, Avro body
    back = AvroDeserializer(registry_client(reg.url), schema_str("dead_letter"))(
        raw, SerializationContext("dlq", MessageField.VALUE))
    assert back == letter.model_dump(mode="json")
    assert "dlq-value" in registry_client(reg.url).get_subjects()


def test_an_avro_encoding_error_reaches_the_caller() -> None:
    e = Encoder(OutputSettings(format="avro"), registry())
    with pytest.raises(Exception):  # noqa: B017 - whatever the serializer raises; the caller decides
        e.encode({"label_id": "only this"}, "label", "labels")


def test_avro_without_a_registry_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="schema_registry.url"):
        Decoder(InputSettings(format="avro"), SchemaRegistrySettings())
    with pytest.raises(ConfigError, match="schema_registry.url"):
        Encoder(OutputSettings(format="avro"), SchemaRegistrySettings())
