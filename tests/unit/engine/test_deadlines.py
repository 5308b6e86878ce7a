"""Deadline decisions: sent once when the deadline passes with the model still to answer, never for
an event already decided or no longer held, retried after an outage."""

from __future__ import annotations

import time
from typing import Any

from streams.engine.deadlines import RETRY_S, Deadlines
from streams.engine.work import OutRecord, Work
from streams.errors import ErrorType, PoisonError, RetryableError
from streams.wire.events import ContentEvent


def work(ts: float | None = 100.0, event_id: str = "e") -> Work:
    w = Work(("in", 0), 1, b"k", b"{}", time.monotonic(), event=ContentEvent(event_id=event_id, text="t"))
    w.timestamp = ts
    return w


class Harness:
    def __init__(self, pending: bool = True) -> None:
        self.sent: list[tuple[Work, OutRecord]] = []
        self.held: set[Work] = set()
        self.fail: list[Exception] = []
        self.deadlines = Deadlines(2.0, view=lambda w: "view" if pending else None, build=self.build,
                                   send=lambda w, r: self.sent.append((w, r)), holds=lambda w: w in self.held)

    def build(self, w: Work) -> list[OutRecord]:
        if self.fail:
            raise self.fail.pop(0)
        return [OutRecord("decisions", w.event.event_id.encode() if w.event else b"")]

    def track(self, *works: Work, now: float = 100.0) -> None:
        for w in works:
            self.held.add(w)
            self.deadlines.track(w, now)


def test_sent_once_when_the_deadline_passes_from_the_record_timestamp() -> None:
    h = Harness()
    w = work(ts=100.0)
    h.track(w, now=150.0)  # consumed late: the deadline counts from the record, not from consumption
    h.track(w, now=150.0)  # a stage run again after an outage: still one deadline
    h.deadlines.tick(101.9)
    assert h.sent == []
    h.deadlines.tick(102.0)
    h.deadlines.tick(200.0)
    assert [x for x, _ in h.sent] == [w] and w.deadline_sent


def test_none_for_an_event_decided_revoked_poison_or_with_nothing_pending() -> None:
    h = Harness()
    decided, revoked, poison = work(event_id="a"), work(event_id="b"), work(event_id="c")
    poison.failure = PoisonError(ErrorType.INVALID_JSON, "x")
    h.track(decided, revoked, poison)
    decided.records.append(OutRecord("decisions", b"final"))  # its final is on its way
    h.held.discard(revoked)
    h.deadlines.tick(1000.0)
    assert h.sent == [] and len(h.deadlines) == 0
    quiet = Harness(pending=False)
    quiet.track(work())
    assert len(quiet.deadlines) == 0


def test_an_outage_delays_it_and_a_bug_skips_it_without_stopping_the_others() -> None:
    h = Harness()
    first, second = work(ts=100.0, event_id="a"), work(ts=100.5, event_id="b")
    h.track(first, second)
    h.fail = [RetryableError("registry down")]
    h.deadlines.tick(103.0)
    assert h.sent == []  # both wait: the outage stops the tick
    h.deadlines.tick(103.0 + RETRY_S)
    assert [x.event.event_id for x, _ in h.sent] == ["b", "a"]
    h2 = Harness()
    bad, good = work(ts=100.0, event_id="bad"), work(ts=100.0, event_id="good")
    h2.track(bad, good)
    h2.fail = [ValueError("bug")]
    h2.deadlines.tick(103.0)
    assert [x.event.event_id for x, _ in h2.sent] == ["good"]


def test_a_record_without_a_timestamp_counts_from_consumption(monkeypatch: Any) -> None:
    h = Harness()
    w = work(ts=None)
    h.track(w, now=500.0)
    h.deadlines.tick(501.0)
    assert h.sent == []
    h.deadlines.tick(502.0)
    assert len(h.sent) == 1
