"""Wire formats: JSON (default) or Avro in the Confluent Schema Registry wire format.

:class:`Decoder` reads content events (``input`` settings), :class:`Encoder` writes labels,
reasoning records and dead letters (``output`` settings). Avro uses confluent-kafka's serializers
(fastavro underneath) with the schemas shipped in this package (``streams/wire/schemas``, the
project's top-level ``schemas/``), registered under the topic-name strategy (``<topic>-value``).
Schema evolution rule: only add fields with defaults, never remove or retype one. Such a change is
both backward and forward compatible, so producers and label consumers can upgrade in either order;
the registry's default check (BACKWARD) accepts it. A registry URL of ``mock://<name>`` uses confluent-kafka's in-memory
registry (tests, demos); one client per URL per process, so every part of the process sees the
same schemas.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from streams.config import InputSettings, OutputSettings, SchemaRegistrySettings
from streams.errors import ConfigError, ErrorType, PoisonError
from streams.wire.events import ContentEvent, decode_content

SCHEMAS = Path(__file__).resolve().parent / "schemas"
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


def _registry(registry: SchemaRegistrySettings, what: str) -> Any:
    if not registry.url:
        raise ConfigError(f"{what}: avro needs schema_registry.url")
    return registry_client(registry.url)


class Decoder:
    """Content events from record values, in ``input.format``; bad input is a PoisonError."""

    def __init__(self, settings: InputSettings, registry: SchemaRegistrySettings) -> None:
        self._max = settings.max_event_bytes
        self._avro: Any = None
        if settings.format == "avro":
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            self._avro = AvroDeserializer(_registry(registry, "input.format"), schema_str("content"))

    def decode(self, value: bytes | None, topic: str) -> ContentEvent:
        """Raises PoisonError (``too_large``, ``invalid_json``, ``invalid_avro``, ``schema_violation``)."""
        if self._avro is None:
            return decode_content(value, max_bytes=self._max)
        if value is None:
            raise PoisonError(ErrorType.SCHEMA_VIOLATION, "message has no value (tombstone)")
        if len(value) > self._max:
            raise PoisonError(ErrorType.TOO_LARGE,
                              f"event is {len(value)} bytes, over input.max_event_bytes={self._max}")
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            doc = self._avro(value, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # noqa: BLE001 - the deserializer raises many types for bad bytes
            raise PoisonError(ErrorType.INVALID_AVRO, f"not Avro in the registry wire format: {exc}") from exc
        try:
            return ContentEvent.model_validate(doc)
        except ValidationError as exc:
            raise PoisonError(ErrorType.SCHEMA_VIOLATION, str(exc.errors(include_url=False)[0]["msg"])) from exc


class Encoder:
    """Output records in ``output.format``: labels (as plain documents on the hot path), reasoning
    records and dead letters (as models)."""

    def __init__(self, settings: OutputSettings, registry: SchemaRegistrySettings) -> None:
        self._client: Any = _registry(registry, "output.format") if settings.format == "avro" else None
        self._serializers: dict[str, Any] = {}

    def encode(self, model: BaseModel | dict[str, Any], schema: str, topic: str) -> bytes:
        """A model, or a document already in the model's JSON shape. Raises whatever the Avro
        serializer or the Schema Registry raises (the caller decides what that means for the event)."""
        if self._client is None:
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
