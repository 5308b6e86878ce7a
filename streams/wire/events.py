"""Wire models (the fields: docs/events.md) and the JSON decoding of content events.

Content events are parsed tolerantly (unknown fields ignored, producers add fields) but strictly on
the fields we use; every rejection is a :class:`~streams.errors.PoisonError` whose ``error_type``
is stable. Label, reasoning and dead-letter events are frozen and versioned (``schema_version``).
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.errors import ErrorType, PoisonError

if TYPE_CHECKING:
    from streams.engine.work import Work
    from streams.inference.labeler import Outcome

SCHEMA_VERSION = 1
LABEL_NAMESPACE = uuid.UUID("6c1f4a52-1b8e-4d1e-9a57-5af3c1d0e2b7")
DEAD_LETTER_VALUE_LIMIT = 64 * 1024

Role = Literal["user", "assistant", "system", "tool"]
Kind = Literal["message", "completion", "chat", "review"]
Confidence = Literal["low", "medium", "high"]
DecidedBy = Literal["model", "cache", "prefilter"]


_second: list[Any] = [-1, ""]  # the last whole second formatted, reused within that second (hot path)


def utc_now() -> str:
    """RFC 3339 timestamp in UTC with millisecond precision, e.g. ``2026-11-22T09:35:52.123Z``."""
    now = time.time()
    sec = int(now)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((now - sec) * 1000):03d}Z"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    role: Role
    content: str


class ContentEvent(BaseModel):
    """An input item to classify. The Kafka key is kept outside the model and reused for labels."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(min_length=1, max_length=256)
    kind: Kind = "message"
    text: str | None = None
    messages: list[ChatMessage] | None = None
    policies: list[str] | None = None
    metadata: dict[str, str] | None = None
    created_at: str | None = None

    @field_validator("created_at")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError("created_at must be an RFC 3339 timestamp") from exc
        return value

    @model_validator(mode="after")
    def _content_present(self) -> ContentEvent:
        if self.kind == "chat":
            if not self.messages:
                raise ValueError("kind 'chat' requires a non-empty 'messages' list")
        elif self.text is None:
            raise ValueError(f"kind {self.kind!r} requires 'text'")
        return self


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    topic: str
    partition: int
    offset: int


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LabelEvent(BaseModel):
    """One label per (content event, policy). ``label_id`` is deterministic so consumers can dedupe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    label_id: str
    event_id: str
    policy_id: str
    policy_version: str
    violation: bool
    category: str | None = None
    rule_ids: list[str] = Field(default_factory=list)
    confidence: Confidence | None = None
    rationale: str | None = None
    reasoning: str | None = None
    decided_by: DecidedBy = "model"
    model: str
    reasoning_effort: str
    source: Source
    metadata: dict[str, str] = Field(default_factory=dict)
    latency_ms: float
    usage: Usage = Field(default_factory=Usage)
    labeled_at: str = Field(default_factory=utc_now)
    prefilter_score: float | None = None  # the cascade's log-odds, when a prefilter scored the pair
    audit: bool = False  # the prefilter would have decided it; sent to the model to measure recall
    prefilter_flags: list[str] = Field(default_factory=list)  # evasion signals that sent it to the model


def label_document(work: Work, outcome: Outcome, *, model: str, effort: str, inline_reasoning: bool,
                   now: float) -> dict[str, Any]:
    """The label event as the plain document :class:`LabelEvent` dumps to (same keys, same order).
    A pydantic model would cost more than the rest of the label's work, and every value here is
    already typed by the code that made it (a unit test validates it)."""
    event, verdict, policy = work.event, outcome.verdict, outcome.policy
    assert event is not None and verdict is not None
    scored = work.prefilter.get(policy.id) if work.prefilter else None
    score, audit, flags = (round(scored[0], 4), scored[1], list(scored[2])) if scored is not None else (None, False, [])
    return {
        "schema_version": SCHEMA_VERSION,
        "label_id": label_id(event.event_id, policy.id, policy.version),
        "event_id": event.event_id,
        "policy_id": policy.id,
        "policy_version": policy.version,
        "violation": verdict.violation,
        "category": verdict.category,
        "rule_ids": verdict.rule_ids,
        "confidence": verdict.confidence,
        "rationale": verdict.rationale,
        "reasoning": outcome.reasoning if inline_reasoning else None,
        "decided_by": outcome.decided_by,
        "model": model,
        "reasoning_effort": effort,
        "source": {"topic": work.tp[0], "partition": work.tp[1], "offset": work.offset},
        "metadata": event.metadata or {},
        "latency_ms": round((now - work.consumed_at) * 1000, 3),
        "usage": {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens},
        "labeled_at": utc_now(),
        "prefilter_score": score,
        "audit": audit,
        "prefilter_flags": flags,
    }


class ReasoningRecord(BaseModel):
    """Chain of thought on its own topic (``output.reasoning == separate``), behind stricter ACLs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label_id: str
    event_id: str
    policy_id: str
    reasoning: str | None


class DeadLetter(BaseModel):
    """Why an input (or one of its policy evaluations) could not be labelled, with the original bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    source: Source
    key: str | None = None
    value: str | None = None
    value_truncated: bool = False
    value_sha256: str | None = None
    event_id: str | None = None
    policy_id: str | None = None
    error_type: ErrorType
    error: str
    attempts: int = 1
    failed_at: str = Field(default_factory=utc_now)


class Reason(BaseModel):
    """One policy's part in a decision: its label, or (``decided_by: dead_letter``) its failure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_id: str
    policy_version: str
    violation: bool | None  # null: the policy was dead-lettered for this event
    category: str | None = None
    confidence: Confidence | None = None
    label_id: str | None = None
    decided_by: Literal["model", "cache", "prefilter", "dead_letter"]


Stage = Literal["provisional", "final", "deadline"]


class DecisionEvent(BaseModel):
    """The action for one content event: at once from what is known before the model (``provisional``),
    once every label is known (``final``), or when ``actions.provisional.deadline_s`` passed first
    (``deadline``). Without ``actions.provisional`` only final decisions are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    decision_id: str
    event_id: str
    action: str
    rule: int | None = None  # 1-based index of the rule that gave the action (actions.rules, or provisional.rules)
    reasons: list[Reason]
    source: Source
    metadata: dict[str, str] = Field(default_factory=dict)
    decided_at: str = Field(default_factory=utc_now)
    stage: Stage = "final"
    supersedes: str | None = None  # the provisional decision_id this one follows; null: none was due
    changed: bool = False  # the action differs from the provisional one: an intervention
    pending: list[str] = Field(default_factory=list)  # provisional: the policies still waiting for the model


def decision_document(work: Work, *, stage: Stage, action: str, rule: int | None, reasons: list[dict[str, Any]],
                      versions: dict[str, str], supersedes: str | None = None, changed: bool = False,
                      pending: list[str] | None = None) -> dict[str, Any]:
    """The decision event as the plain document :class:`DecisionEvent` dumps to. ``versions``: the
    versions of the event's policies that the decision rests on (its id's input)."""
    event = work.event
    assert event is not None
    return {"schema_version": SCHEMA_VERSION, "decision_id": decision_id(event.event_id, versions, stage),
            "event_id": event.event_id, "action": action, "rule": rule, "reasons": reasons,
            "source": {"topic": work.tp[0], "partition": work.tp[1], "offset": work.offset},
            "metadata": event.metadata or {}, "decided_at": utc_now(), "stage": stage, "supersedes": supersedes,
            "changed": changed, "pending": pending or []}


class EscalationEvent(BaseModel):
    """One per (actor, policy, window) whose violation count reached ``escalation.threshold``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    escalation_id: str
    actor: str
    policy_id: str
    count: int
    threshold: int
    window_start: str
    window_end: str
    event_ids: list[str]  # the first 50 counted
    escalated_at: str = Field(default_factory=utc_now)


_NAMESPACE_BYTES = LABEL_NAMESPACE.bytes
DECISION_NAMESPACE = uuid.UUID("0b9a6f3e-5d0c-4c55-8f0e-2f6a9d1e7c44")
ESCALATION_NAMESPACE = uuid.UUID("4e2d8c1a-7b3f-4a9e-b6d5-91c0f8e2a3b7")


def decision_id(event_id: str, versions: dict[str, str], stage: str = "final") -> str:
    """Deterministic from the event, the stage and the versions of the policies that decided it:
    ``uuid5(DECISION_NAMESPACE, "<event_id>\x1f<policy_id>=<version>\x1f...")``, policies sorted, for a
    final decision (the id decisions had before stages existed); ``<stage>\x1f`` comes first for
    the others."""
    parts = ([] if stage == "final" else [stage]) + [event_id] + [f"{p}={v}" for p, v in sorted(versions.items())]
    return str(uuid.uuid5(DECISION_NAMESPACE, "\x1f".join(parts)))


def escalation_id(actor: str, policy_id: str, window_start: int) -> str:
    """Deterministic from (actor, policy, window start in epoch seconds): a replay or a restart that
    escalates again writes the same id."""
    return str(uuid.uuid5(ESCALATION_NAMESPACE, f"{actor}\x1f{policy_id}\x1f{window_start}"))


def label_id(event_id: str, policy_id: str, policy_version: str) -> str:
    """Deterministic label id: the same event, policy and version always give the same id.

    It is ``uuid.uuid5(LABEL_NAMESPACE, "<event_id>\\x1f<policy_id>\\x1f<policy_version>")``, computed
    without building a ``UUID`` object (half the cost on the per-label path; equality is tested).
    """
    name = f"{event_id}\x1f{policy_id}\x1f{policy_version}".encode()
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def label_id_prefix(event_id: str, policy_id: str, policy_version: str) -> int:
    """The first 32 bits of :func:`label_id` as an integer (``int(label_id(...)[:8], 16)``), without
    formatting the id: the prefilter's audit sample is drawn from it."""
    name = f"{event_id}\x1f{policy_id}\x1f{policy_version}".encode()
    return int.from_bytes(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:4], "big")


def decode_content(value: bytes | None, *, max_bytes: int) -> ContentEvent:
    """Parse and validate one JSON content event.

    Raises:
        PoisonError: ``too_large`` (over ``max_bytes``), ``invalid_json`` (not JSON or not UTF-8)
            or ``schema_violation`` (JSON of the wrong shape).
    """
    if value is None:
        raise PoisonError(ErrorType.SCHEMA_VIOLATION, "message has no value (tombstone)")
    if len(value) > max_bytes:
        raise PoisonError(ErrorType.TOO_LARGE, f"event is {len(value)} bytes, over input.max_event_bytes={max_bytes}")
    try:
        return ContentEvent.model_validate_json(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise PoisonError(ErrorType.INVALID_JSON, f"not valid JSON: {errors[0]['msg']}") from exc
        raise PoisonError(ErrorType.SCHEMA_VIOLATION, _describe(errors)) from exc


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def dead_letter_for(
    *,
    source: Source,
    key: bytes | None,
    value: bytes | None,
    error_type: ErrorType,
    error: str,
    event_id: str | None = None,
    policy_id: str | None = None,
    attempts: int = 1,
) -> DeadLetter:
    """Build a dead letter that always fits the broker: originals over 64 KiB are truncated with a hash."""
    truncated = value is not None and len(value) > DEAD_LETTER_VALUE_LIMIT
    kept = value[:DEAD_LETTER_VALUE_LIMIT] if (value is not None and truncated) else value
    return DeadLetter(
        source=source,
        key=base64.b64encode(key).decode("ascii") if key is not None else None,
        value=base64.b64encode(kept).decode("ascii") if kept is not None else None,
        value_truncated=truncated,
        value_sha256=hashlib.sha256(value).hexdigest() if value is not None else None,
        event_id=event_id,
        policy_id=policy_id,
        error_type=error_type,
        error=error,
        attempts=attempts,
    )
