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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from streams.config import InputSettings, OutputSettings, SchemaRegistrySettings, Settings
from streams.errors import ConfigError, ErrorType, FatalError, PoisonError, RetryableError
from streams.wire.events import ContentEvent, decode_content

SCHEMAS = Path(__file__).resolve().parent / "schemas"
_NAMESPACE = "io.safeguard.streams."


REGISTRY_TIMEOUT_S = 5.0


@functools.cache
def registry_client(url: str) -> Any:
    """One client per URL per process. No retries inside the client: its calls run on the event
    loop, and its own retries sleep there; an unreachable registry is retried by the pipeline
    instead (:mod:`streams.engine.waiting`), without blocking anything else."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    if url.startswith("mock://"):
        return SchemaRegistryClient.new_client({"url": url})
    return SchemaRegistryClient({"url": url, "max.retries": 0, "timeout": REGISTRY_TIMEOUT_S})


def registry_outage(exc: BaseException) -> bool:
    """The registry could not be reached or answered with a server error (the data may be fine)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        return exc.http_status_code in (408, 429) or exc.http_status_code >= 500
    # The client's HTTP layer (httpx, vendored by confluent-kafka) fails with TransportError
    # subclasses: refused, reset, DNS, TLS, timeouts.
    return isinstance(exc, OSError | TimeoutError) or any(c.__name__ == "TransportError" for c in type(exc).__mro__)


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
        self._url = registry.url
        self._avro: Any = None
        if settings.format == "avro":
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            self._avro = AvroDeserializer(_registry(registry, "input.format"), schema_str("content"))

    def decode(self, value: bytes | None, topic: str) -> ContentEvent:
        """Raises PoisonError (``too_large``, ``invalid_json``, ``invalid_avro``, ``schema_violation``),
        or RetryableError when the registry that holds the writer's schema cannot be reached."""
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
            if registry_outage(exc):
                raise RetryableError(f"schema registry unreachable at {self._url}: {exc}") from exc
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
        self._url = registry.url
        self._serializers: dict[str, Any] = {}

    def register(self, subjects: dict[str, list[str]]) -> None:
        """Register the schemas of ``{schema name: [topics]}`` under ``<topic>-value`` now (at
        start-up), so that encoding needs the registry no more. Raises RetryableError when the
        registry cannot be reached, FatalError when it refuses a schema."""
        if self._client is None:
            return
        from confluent_kafka.schema_registry import Schema

        for name, topics in subjects.items():
            schema = Schema(schema_str(name), "AVRO")
            for topic in topics:
                try:
                    self._client.register_schema(f"{topic}-value", schema)
                except Exception as exc:  # noqa: BLE001 - the client raises transport and HTTP errors
                    if registry_outage(exc):
                        raise RetryableError(f"schema registry unreachable at {self._url}: {exc}") from exc
                    raise FatalError(f"the schema registry at {self._url} refuses schema {name} for "
                                     f"{topic}-value: {exc}") from exc

    def encode(self, model: BaseModel | dict[str, Any], schema: str, topic: str) -> bytes:
        """A model, or a document already in the model's JSON shape. Raises RetryableError when the
        registry cannot be reached; anything else the serializer raises is left to the caller (a
        record the schema cannot hold is this event's problem, not the stream's)."""
        if self._client is None:
            return orjson.dumps(model) if isinstance(model, dict) else model.model_dump_json().encode()
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = self._serializers.get(schema)
        if serializer is None:
            from confluent_kafka.schema_registry.avro import AvroSerializer

            serializer = self._serializers[schema] = AvroSerializer(
                self._client, schema_str(schema), conf={"auto.register.schemas": True})
        doc = model if isinstance(model, dict) else model.model_dump(mode="json")
        try:
            out = serializer(doc, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            if registry_outage(exc):
                raise RetryableError(f"schema registry unreachable at {self._url}: {exc}") from exc
            raise
        assert out is not None
        return bytes(out)


def label_reader(settings: Settings, topic: str) -> Callable[[bytes], dict[str, Any]]:
    """A decoder of the label events the consumer writes on ``topic``, in ``output.format`` (Avro
    through ``schema_registry.url``): for the services that read labels back (escalation, training
    from the label history)."""
    return record_reader(settings, topic, "label")


def record_reader(settings: Settings, topic: str, schema: str) -> Callable[[bytes], dict[str, Any]]:
    """A decoder of our records of ``schema`` on ``topic``, in ``output.format``."""
    if settings.output.format != "avro":
        return orjson.loads
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    if not settings.schema_registry.url:
        raise ConfigError(f"output.format avro needs schema_registry.url to read {topic}")
    deserialize = AvroDeserializer(registry_client(settings.schema_registry.url), schema_str(schema))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return lambda value: deserialize(value, ctx)
