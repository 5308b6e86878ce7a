"""Osprey out: our labels and decisions as actions on Osprey's input topic.

Osprey (roostorg/osprey) reads JSON actions from Kafka (``osprey.actions_input`` by default,
``OSPREY_KAFKA_INPUT_STREAM_TOPIC``). Its worker's ``KafkaInputStream`` (osprey_worker/src/osprey/
worker/sinks/sink/input_stream.py) does ``json.loads(value)``, parses ``send_time`` with
``dateutil.parser.parse`` (``parse_go_timestamp``: RFC 3339 with nanoseconds, in UTC), and builds
``Action(action_id=int(data['action_id']), action_name=data['action_name'], data=data['data'])``;
a message it cannot read is logged and skipped, so ours must always read. The ids are unsigned
64-bit in Osprey's protos: ours is the first 63 bits of the label (or decision) id, so a replay
writes the same action id, and it is never 0.

``data.data`` is the label or decision document exactly as on our own topics (``metadata`` holds the
event's metadata, e.g. the actor id an SML ``EntityJson(path='$.metadata.user_id')`` reads); a label
has ``label_id`` and a decision ``decision_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from streams.config import OspreySettings


def action_id(record_id: str) -> int:
    """A positive int64 from a label or decision id (a UUID): its first 63 bits, or 1 if they are 0."""
    return int(record_id.replace("-", "")[:16], 16) >> 1 or 1


def send_time(rfc3339: str) -> str:
    """``2026-12-03T09:35:52.123Z`` -> ``2026-12-03T09:35:52.123000000Z``: Go's RFC 3339 with
    nanoseconds, in UTC, as Osprey's own producers write it."""
    stamp = rfc3339.removesuffix("Z")
    whole, _, fraction = stamp.partition(".")
    return f"{whole}.{(fraction + '000000000')[:9]}Z"


class OspreyActions:
    """Builds Osprey actions for the records ``integrations.osprey.source`` names."""

    def __init__(self, settings: OspreySettings) -> None:
        assert settings.topic is not None
        self.topic = settings.topic
        self._name = settings.action_name
        self.labels = settings.source in ("labels", "both")
        self.decisions = settings.source in ("decisions", "both")

    def label(self, doc: Mapping[str, Any]) -> bytes:
        return self._action(doc["label_id"], doc["labeled_at"], doc)

    def decision(self, doc: Mapping[str, Any]) -> bytes:
        return self._action(doc["decision_id"], doc["decided_at"], doc)

    def _action(self, record_id: str, at: str, doc: Mapping[str, Any]) -> bytes:
        return orjson.dumps({"send_time": send_time(at),
                             "data": {"action_id": action_id(record_id), "action_name": self._name, "data": doc}})


def osprey_actions(settings: OspreySettings) -> OspreyActions | None:
    """The builder, or None when ``integrations.osprey.topic`` is null."""
    return OspreyActions(settings) if settings.topic is not None else None
