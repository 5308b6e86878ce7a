"""The output catalogue: every kind of record the services write, one row each.

A row names the kind's Avro schema (``schemas/<schema>.avsc``, registered as ``<topic>-value``),
the wire model that schema mirrors (:mod:`streams.wire.events`, with the kind's builder beside it),
the setting that names its topic, when it is written, and by which service. The start-up topic
check, the schema registration and the output stage read this table, so a new output kind is a
row here plus its model, schema and builder (docs/events.md lists the fields).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from streams.config import Settings
from streams.wire.events import DeadLetter, DecisionEvent, EscalationEvent, LabelEvent, ReasoningRecord
from streams.wire.integrations import CoopRequest, OspreyAction, ReviewEvent

# safeguard run, run --provisional, escalate, coop reports, coop callbacks
Writer = Literal["reasoning", "provisional", "escalation", "coop", "callbacks"]


@dataclass(frozen=True)
class OutputKind:
    name: str  # as the logs and docs call it
    schema: str  # schemas/<schema>.avsc (with ``foreign``: the name of another tool's JSON envelope)
    model: type[BaseModel]
    setting: str  # the setting that names the topic, for messages
    topic_of: Callable[[Settings], str | None]  # the topic, or None: not written under these settings
    writers: tuple[Writer, ...] = ("reasoning",)
    shadow: bool = False  # written only while a shadow policy is loaded
    foreign: bool = False  # JSON whatever output.format says (another tool's envelope or requests): not registered

    def topic(self, settings: Settings) -> str:
        """The topic under ``settings``; raises ValueError when this kind is not written there."""
        topic = self.topic_of(settings)
        if topic is None:
            raise ValueError(f"{self.name} records are not written under these settings ({self.setting})")
        return topic


def _provisional_topic(s: Settings) -> str | None:
    return s.actions.topic if s.actions.provisional is not None else None


LABEL = OutputKind("label", "label", LabelEvent, "kafka.labels_topic", lambda s: s.kafka.labels_topic)
SHADOW_LABEL = OutputKind("shadow label", "label", LabelEvent, "kafka.shadow_labels_topic",
                          lambda s: s.kafka.shadow_labels_topic, shadow=True)
REASONING = OutputKind("reasoning", "reasoning", ReasoningRecord, "kafka.reasoning_topic",
                       lambda s: s.kafka.reasoning_topic if s.output.reasoning == "separate" else None)
DEAD_LETTER = OutputKind("dead letter", "dead_letter", DeadLetter, "kafka.dead_letter_topic",
                         lambda s: s.kafka.dead_letter_topic, writers=("reasoning", "provisional", "coop"))
DECISION = OutputKind("decision", "decision", DecisionEvent, "actions.topic", lambda s: s.actions.topic)
PROVISIONAL_DECISION = OutputKind("provisional decision", "decision", DecisionEvent, "actions.topic",
                                  _provisional_topic, writers=("provisional",))
OSPREY_ACTION = OutputKind("osprey action", "osprey_action", OspreyAction, "integrations.osprey.topic",
                           lambda s: s.integrations.osprey.topic, writers=("reasoning", "provisional"), foreign=True)
COOP_REQUEST = OutputKind("coop request", "coop_request", CoopRequest, "integrations.coop.outbox_topic",
                          lambda s: s.integrations.coop.outbox_topic if s.integrations.coop.url else None,
                          foreign=True)
REVIEW = OutputKind("review", "review", ReviewEvent, "integrations.coop.reviews_topic",
                    lambda s: s.integrations.coop.reviews_topic, writers=("callbacks",))
ESCALATION = OutputKind("escalation", "escalation", EscalationEvent, "escalation.topic",
                        lambda s: s.escalation.topic, writers=("escalation",))

CATALOGUE: tuple[OutputKind, ...] = (LABEL, SHADOW_LABEL, REASONING, DEAD_LETTER, DECISION, PROVISIONAL_DECISION,
                                     OSPREY_ACTION, COOP_REQUEST, REVIEW, ESCALATION)


def written(settings: Settings, *, writer: Writer = "reasoning", shadow: bool = False) -> list[tuple[OutputKind, str]]:
    """The kinds ``writer`` writes under ``settings`` (``shadow``: a shadow policy is loaded), each
    with its topic, in catalogue order."""
    rows = []
    for kind in CATALOGUE:
        topic = kind.topic_of(settings)
        if writer in kind.writers and topic is not None and (shadow or not kind.shadow):
            rows.append((kind, topic))
    return rows


def output_topics(settings: Settings, *, writer: Writer = "reasoning", shadow: bool = False) -> list[str]:
    """Every topic ``writer`` writes to, each once: what must exist before it consumes anything."""
    return list(dict.fromkeys(topic for _, topic in written(settings, writer=writer, shadow=shadow)))


def subjects(settings: Settings, *, writer: Writer = "reasoning", shadow: bool = False) -> dict[str, list[str]]:
    """``{schema: [topics]}``: what ``writer`` registers with the schema registry at start-up."""
    out: dict[str, list[str]] = {}
    for kind, topic in written(settings, writer=writer, shadow=shadow):
        if kind.foreign:
            continue
        topics = out.setdefault(kind.schema, [])
        if topic not in topics:
            topics.append(topic)
    return out
