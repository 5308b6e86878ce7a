"""Wire models of the integrations (docs/integrations.md, docs/events.md): Osprey actions and Coop
requests (always JSON, in the catalogue as ``foreign`` rows) and review events (Avro schema
``schemas/review.avsc``)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.wire.events import SCHEMA_VERSION, utc_now

REVIEW_NAMESPACE = uuid.UUID("9b1f6c3e-2d4a-4e8b-a7c5-3f0e1d2b6a94")


class OspreyActionData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action_id: int = Field(gt=0, lt=2**63)  # from the label or decision id: a replay writes the same id
    action_name: str  # integrations.osprey.action_name: what Osprey's rules match on
    data: dict[str, Any]  # the label or decision document


class OspreyAction(BaseModel):
    """An Osprey action (roostorg/osprey, the Kafka input stream's envelope): our label or decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    send_time: str  # RFC 3339 with nanoseconds, UTC (Go's format, parsed by Osprey with dateutil)
    data: OspreyActionData


class CoopRequest(BaseModel):
    """A request for Coop, written by the reasoning consumer under the labels' delivery guarantee and
    sent by ``safeguard coop reports`` (integrations.coop.outbox_topic; JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["report", "item"]  # POST /api/v1/report, or one item of POST /api/v1/items/async/
    id: str  # a report: its decision's id; an item: its event id (Coop keeps one item per id)
    event_id: str
    body: dict[str, Any]  # the report, or the item, exactly as Coop's API takes it


class ReviewPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    penalty: str | None = None


class ReviewEvent(BaseModel):
    """A moderator's decision in Coop (an action callback, its signature verified), on
    ``integrations.coop.reviews_topic``: the gold labels of ``eval`` / ``prefilter train --from-reviews``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    review_id: str  # uuid5 of the callback's body: Coop sending the same callback again gives the same id
    event_id: str  # Coop's item id: ours, as we reported or submitted it
    action: str  # Coop's action id
    policies: list[ReviewPolicy]  # the policies the moderator named
    actor: str | None = None  # the moderator (Coop's actorEmail), when Coop says
    decided_at: str = Field(default_factory=utc_now)  # when the callback was received


def review_id(body: bytes) -> str:
    """Deterministic from the callback's exact bytes (Coop serialises with sorted keys)."""
    return str(uuid.uuid5(REVIEW_NAMESPACE, hashlib.sha256(body).hexdigest()))
