from __future__ import annotations

import orjson
import pytest

from streams.devtools.bench import workload

pytest.importorskip("streams.devtools.obfuscate")


def test_cascade_workload_phases_labels_and_answer_key() -> None:
    work = workload.cascade_workload(200, history=400)
    again = workload.cascade_workload(200, history=400)
    assert work.stream == again.stream and work.training == again.training  # deterministic
    events = [orjson.loads(v) for _, v in work.stream]
    phases = [work.truth[e["event_id"]].phase for e in events]
    assert phases == ["steady"] * 200 + ["shifted"] * 200 + ["adversarial"] * 100  # in order
    assert all(e["event_id"].startswith(workload.PHASES[p]) for e, p in zip(events, phases, strict=True))
    for phase, violations in (("steady", 20), ("shifted", 20), ("adversarial", 25)):
        assert sum(t.label for t in work.truth.values() if t.phase == phase) == violations
    adversarial = [t for t in work.truth.values() if t.phase == "adversarial"]
    assert all(bool(t.tricks) == bool(t.label) for t in adversarial)
    assert {len(t.tricks) for t in adversarial if t.label} == {1, 2, 3}
    texts = [e["text"] for e in events]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & {t for t, _ in work.training}  # the stream is unseen in training
    key = {row["text"]: row["label"] for row in work.key_rows}
    assert all(key[e["text"]] == work.truth[e["event_id"]].label for e in events)  # exact texts, the model's answers
    assert sum(y for _, y in work.training[: work.history]) == round(400 * workload.HISTORY_VIOLATION_SHARE)
