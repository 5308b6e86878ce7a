"""Wire formats: JSON (default) or Avro in the Confluent Schema Registry wire format.

Avro uses confluent-kafka's serializers (fastavro underneath) with the schemas in ``schemas/``,
registered under the topic-name strategy (``<topic>-value``). Schema evolution rule: every change
must stay BACKWARD compatible (only add fields with defaults, never remove or retype one), which is
the registry's default check, so consumers of labels can upgrade after producers.
A registry URL of ``mock://<name>`` uses confluent-kafka's in-memory registry (tests, demos); one
client per URL per process, so every part of the process sees the same schemas.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from streams.config import Settings
from streams.errors import ConfigError, PoisonError
from streams.events import ContentEvent, decode_content

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
_NAMESPACE = "io.safeguard.streams."


@functools.cache
def registry_client(url: str) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    if url.startswith("mock://"):
        return SchemaRegistryClient.new_client({"url": url})
    return SchemaRegistryClient({"url": url})


def schema_str(name: str) -> str:
    """A self-contained schema: the shared Source record is inlined where it is referenced."""
    try:
        doc = json.loads((SCHEMAS / f"{name}.avsc").read_text(encoding="utf-8"))
        source = json.loads((SCHEMAS / "source.avsc").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read Avro schema {name}: {exc}") from exc
    doc = copy.deepcopy(doc)
    for field in doc["fields"]:
        if field["type"] == _NAMESPACE + "Source":
            field["type"] = source
    return json.dumps(doc)


class Codec:
    """Decodes content events and encodes output records in the configured formats."""

    def __init__(self, settings: Settings) -> None:
        self._max = settings.input.max_event_bytes
        self._in_avro = settings.input.format == "avro"
        self._out_avro = settings.output.format == "avro"
        self._serializers: dict[str, Any] = {}
        if self._in_avro or self._out_avro:
            url = settings.schema_registry.url
            if not url:
                raise ConfigError("input.format/output.format avro needs schema_registry.url")
            self._client = registry_client(url)
        if self._in_avro:
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            self._deserializer = AvroDeserializer(self._client, schema_str("content"))

    def decode(self, value: bytes | None, topic: str) -> ContentEvent:
        """Raises PoisonError (``too_large``, ``invalid_json``, ``invalid_avro``, ``schema_violation``)."""
        if not self._in_avro:
            return decode_content(value, max_bytes=self._max)
        if value is None:
            raise PoisonError("schema_violation", "message has no value (tombstone)")
        if len(value) > self._max:
            raise PoisonError("too_large", f"event is {len(value)} bytes, over input.max_event_bytes={self._max}")
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            doc = self._deserializer(value, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # noqa: BLE001 - the deserializer raises many types for bad bytes
            raise PoisonError("invalid_avro", f"not Avro in the registry wire format: {exc}") from exc
        try:
            return ContentEvent.model_validate(doc)
        except ValidationError as exc:
            raise PoisonError("schema_violation", str(exc.errors(include_url=False)[0]["msg"])) from exc

    def encode(self, model: BaseModel | dict[str, Any], schema: str, topic: str) -> bytes:
        """A model, or a document already in the model's JSON shape (labels on the hot path)."""
        if not self._out_avro:
            return orjson.dumps(model) if isinstance(model, dict) else model.model_dump_json().encode()
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = self._serializers.get(schema)
        if serializer is None:
            from confluent_kafka.schema_registry.avro import AvroSerializer

            serializer = self._serializers[schema] = AvroSerializer(
                self._client, schema_str(schema), conf={"auto.register.schemas": True})
        doc = model if isinstance(model, dict) else model.model_dump(mode="json")
        out = serializer(doc, SerializationContext(topic, MessageField.VALUE))
        assert out is not None
        return bytes(out)
