"""The escalation's arithmetic: distinct labels count once, one escalation at the threshold, windows
aligned on the epoch by the label's event time."""

from __future__ import annotations

from streams.interventions.tally import MAX_EVENT_IDS, count, escalated, event_time, rfc3339, window_start
from streams.wire.events import escalation_id


def test_distinct_labels_reach_the_threshold_once_and_a_replay_counts_nothing() -> None:
    state = None
    reached = []
    for label in ["l1", "l2", "l1", "l3", "l4"]:  # l1 read twice (a replay)
        counted = count(state, label_id=label, event_id=f"e-{label}", threshold=3)
        if counted.reached:
            reached.append(label)
            state = escalated(counted.state)
        elif counted.changed:
            state = counted.state
    assert reached == ["l3"]  # l1 counted once: the third distinct label escalates, the fourth does not
    assert state == {"ids": [], "events": ["e-l1", "e-l2", "e-l3"], "count": 3, "escalated": True}


def test_a_crash_between_the_escalation_and_its_tally_escalates_again_with_the_same_id() -> None:
    """The tally was not stored (crash): the replayed label reaches the threshold again, and the
    escalation id depends only on (actor, policy, window), so the duplicate is recognisable."""
    before = count({"ids": ["l1", "l2"], "events": ["e1", "e2"]}, label_id="l3", event_id="e3", threshold=3)
    again = count({"ids": ["l1", "l2"], "events": ["e1", "e2"]}, label_id="l3", event_id="e3", threshold=3)
    assert before.reached and again.reached
    assert escalation_id("a", "spam", 0) == escalation_id("a", "spam", 0) != escalation_id("a", "spam", 86400)


def test_event_ids_are_kept_up_to_fifty() -> None:
    state = None
    for i in range(80):
        counted = count(state, label_id=f"l{i}", event_id=f"e{i}", threshold=100)
        state = counted.state
    assert state is not None and len(state["events"]) == MAX_EVENT_IDS and len(state["ids"]) == 80


def test_windows_are_tumbling_by_event_time_aligned_on_the_epoch() -> None:
    t = event_time("2026-12-01T23:59:59.999Z")
    assert window_start(t, 86400) == event_time("2026-12-01T00:00:00.000Z")
    assert window_start(t + 0.002, 86400) == event_time("2026-12-02T00:00:00.000Z")
    assert rfc3339(window_start(t, 3600)) == "2026-12-01T23:00:00.000Z"
    assert rfc3339(event_time("2026-12-01T19:14:03.123Z")) == "2026-12-01T19:14:03.123Z"
