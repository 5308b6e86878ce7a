"""The escalation's arithmetic, kept apart from faust so it can be tested alone.

A tally is the state of one (actor, policy, window): the distinct violating labels counted so far
(by ``label_id``, so a label read twice, after a restart or a rebalance, counts once), the first 50
event ids, and whether it has escalated. It lives as a plain JSON document in a faust table, whose
changelog topic makes it survive restarts.

Windows are tumbling, by the label's event time (``labeled_at``), aligned on the Unix epoch:
``[floor(t / window_s) * window_s, + window_s)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_EVENT_IDS = 50


def event_time(labeled_at: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp (``2026-12-01T19:14:03.123Z``)."""
    return datetime.fromisoformat(labeled_at.replace("Z", "+00:00")).timestamp()


def window_start(ts: float, window_s: int) -> int:
    return int(ts // window_s) * window_s


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class Counted:
    """What one label did to its tally."""

    state: dict[str, Any]  # the tally to store
    changed: bool  # False: a label already counted (a replay): store nothing
    reached: bool  # this label brought the count to the threshold: escalate


def count(state: dict[str, Any] | None, *, label_id: str, event_id: str, threshold: int) -> Counted:
    """Count one violating label into its (actor, policy, window) tally."""
    state = state or {}
    ids: list[str] = state.get("ids", [])
    if label_id in ids or state.get("escalated"):
        # counted already, or escalated already: past the threshold only the first
        # MAX_EVENT_IDS events are kept, and nothing more is emitted
        return Counted(state, False, False)
    ids = ids + [label_id]
    events: list[str] = state.get("events", [])
    if event_id not in events and len(events) < MAX_EVENT_IDS:
        events = events + [event_id]
    reached = len(ids) >= threshold
    return Counted({"ids": ids, "events": events, "escalated": False}, True, reached)


def escalated(state: dict[str, Any]) -> dict[str, Any]:
    """The tally once its escalation is acknowledged: the label ids are no longer needed."""
    return {"ids": [], "events": state.get("events", []), "count": len(state.get("ids", [])), "escalated": True}
