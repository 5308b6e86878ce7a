"""The two faust-streaming fixes, on a stand-in consumer: what is resumed when, and what commits.
The integration tests (tests/integration/interventions/test_escalation.py) show each on the broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP

from streams.interventions import faust_fixes

LABELS, CHANGELOG = TP("labels", 0), TP("app-tallies-changelog", 0)


class StandInConsumer:
    """The parts of faust's consumer the fix touches, recording what happened in order."""

    def __init__(self) -> None:
        self.active: set[TP] = set()
        self.events: list[tuple[str, frozenset[TP]]] = []

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    def resume_partitions(self, tps: Any) -> None:
        self.active.update(tps)
        self.events.append(("resume", frozenset(tps)))

    async def perform_seek(self) -> None:
        self.events.append(("seek, active at the time", frozenset(self.active)))
        await asyncio.sleep(0)


class App:
    def __init__(self) -> None:
        self.consumer = StandInConsumer()


async def faust_order(recovery: Any) -> None:
    """What faust 0.15's on_recovery_completed does: resume the inputs, then seek."""
    recovery.app.consumer.resume_partitions({LABELS})
    await recovery.app.consumer.perform_seek()


def test_apply_is_idempotent_and_marks_what_it_patched() -> None:
    faust_fixes.apply()
    first = (Recovery.on_recovery_completed, Recovery._resume_streams, Consumer._new_offset)
    faust_fixes.apply()
    assert (Recovery.on_recovery_completed, Recovery._resume_streams, Consumer._new_offset) == first
    assert all(getattr(f, "safeguard_patched", False) for f in first)


def test_input_partitions_are_resumed_only_after_the_seek_and_the_active_set_never_empties() -> None:
    recovery = type("R", (), {"app": App()})()
    consumer = recovery.app.consumer
    asyncio.run(faust_fixes._deferring_stream_resume(faust_order)(recovery))
    assert consumer.events == [
        ("seek, active at the time", frozenset({faust_fixes._HOLD})),  # held: only the placeholder
        ("resume", frozenset({LABELS})),
    ]
    assert consumer.active == {LABELS}  # the placeholder is gone
    assert "resume_partitions" not in vars(consumer) and "perform_seek" not in vars(consumer)


def test_changelog_partitions_resume_at_once_and_inputs_resume_even_without_a_seek() -> None:
    async def no_seek(recovery: Any) -> None:  # an empty assignment: faust resumes without seeking
        recovery.app.consumer.resume_partitions({LABELS, CHANGELOG})
        assert recovery.app.consumer.active == {CHANGELOG, faust_fixes._HOLD}

    recovery = type("R", (), {"app": App()})()
    asyncio.run(faust_fixes._deferring_stream_resume(no_seek)(recovery))
    assert recovery.app.consumer.active == {LABELS, CHANGELOG}


def test_commit_offset_ignores_duplicate_and_already_committed_acks() -> None:
    faust_fixes.apply()
    tp = TP("labels", 0)
    consumer = SimpleNamespace(  # only the bookkeeping _new_offset reads
        _acked={tp: [5, 5, 3, 6, 6, 7]}, _acked_index={tp: {3, 5, 6, 7}}, _committed_offset={tp: 5}, _gap={tp: None})
    # 5, 6, 7 acknowledged: commit 8 (faust's own answer is 4, the first run of [3, 5, 5, ...], a step back)
    assert Consumer._new_offset(consumer, tp) == 8
