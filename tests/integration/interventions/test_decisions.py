"""Decisions on the real broker and the simulator: one per content event, the action its labels and
the rules give (first match, on_error for a dead-lettered policy, the default), under both delivery
guarantees, and after a SIGKILL duplicates only with the same decision_id."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.app import run_consumer
from streams.authoring.datasets import load_dataset
from streams.config import load_settings
from streams.devtools.broker import create_topics
from tests.integration.engine.test_faults import high_watermarks
from tests.integration.helpers import ROOT, produce, read_all, read_until, write_config

# the demo's subset: also run on the embedded broker (make test-embedded)
pytestmark = pytest.mark.embedded

RULES = [{"policy": "fake-reviews", "violation": True, "action": "hide"},
         {"policy": "spam", "violation": True, "action": "block"}]
LONG_POLICY = "a policy too long for the replica's context"


def expected_action(labels: list[dict[str, Any]], failed: bool) -> str:
    """The rules above, written out: what each event's decision must be given its labels."""
    by = {lab["policy_id"]: lab["violation"] for lab in labels}
    if by.get("fake-reviews"):
        return "hide"
    if by.get("spam"):
        return "block"
    return "review" if failed else "allow"


def setup(tmp_path: Path, kafka_bootstrap: str, topics: Any, sims: Any, answer_key: Any, n: int,
          time_scale: float = 100.0, release: int | None = None, **config: Any) -> tuple[dict[str, str], Path]:
    """Policies spam, fake-reviews and 'long' (its prompt exceeds the replica's context, so the
    replica refuses it: a dead letter for that policy alone); ``n`` events, every fifth also asked
    for 'long'; the simulated model answers from both golden sets. ``release``: produce only the
    first ``release`` events (``content_events(n)[release:]`` later)."""
    names = topics(partitions=3)
    names["decisions"] = names["labels"].replace("labels-", "decisions-")
    create_topics(kafka_bootstrap, {names["decisions"]: 3})
    policies = tmp_path / "policies"
    policies.mkdir()
    for pid in ("spam", "fake-reviews"):
        shutil.copy(ROOT / f"policies/{pid}.md", policies / f"{pid}.md")
    # 'long' is about 41,000 tokens: over the 32,768 context, where the other policies' prompts leave
    # room for any reasoning (the server clamps generation to the context: a short context would cut
    # their long reasoning too, as vLLM does)
    (policies / "long.md").write_text(f"---\nid: long\n---\n# {LONG_POLICY}\n\n" + "Rule text. " * 15000)
    spam, fake = (load_dataset(ROOT / f"policies/{p}.golden.jsonl").items for p in ("spam", "fake-reviews"))
    key = [{"text": i.text, "label": i.label, "category": i.category, "policy": "spam"} for i in spam]
    key += [{"text": i.text, "label": i.label, "category": i.category, "policy": "fake-reviews"} for i in fake]
    urls = sims(1, answer_key=answer_key(key), time_scale=time_scale, extra_args=["--max-model-len", "32768"]).urls
    produce(kafka_bootstrap, names["input"], content_events(n)[:release])
    path = write_config(tmp_path, kafka_bootstrap, names, urls,
                        policies={"dir": str(policies), "default": ["spam", "fake-reviews"]},
                        actions={"topic": names["decisions"], "default": "allow", "on_error": "review",
                                 "rules": RULES}, cache={"max_entries": 0}, **config)
    return names, path


def content_events(n: int) -> list[tuple[bytes, bytes]]:
    spam, fake = (load_dataset(ROOT / f"policies/{p}.golden.jsonl").items for p in ("spam", "fake-reviews"))
    texts = [i.text for pair in zip(spam, fake, strict=False) for i in pair]
    events = []
    for k in range(n):
        doc: dict[str, Any] = {"event_id": f"e{k}", "text": texts[k % len(texts)],
                               "metadata": {"author_id": f"a{k % 7}"}}
        if k % 5 == 0:
            doc["policies"] = ["spam", "fake-reviews", "long"]
        events.append((f"k{k}".encode(), orjson.dumps(doc)))
    return events


def wait_committed(bootstrap: str, group: str, topic: str, events: int, timeout_s: float = 120) -> int:
    """Wait until the group has committed at least ``events`` offsets of ``topic`` (summed)."""
    import time

    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                done = sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10))
            except KafkaException as exc:  # the group's coordinator not elected yet, or moving: ask again
                if not exc.args[0].retriable() and exc.args[0].code() not in (KafkaError.NOT_COORDINATOR,
                                                                              KafkaError.COORDINATOR_NOT_AVAILABLE,
                                                                              KafkaError.COORDINATOR_LOAD_IN_PROGRESS):
                    raise
                time.sleep(0.2)
                continue
            if done >= events:
                return done
            time.sleep(0.1)
        raise AssertionError(f"the group committed fewer than {events} offsets within {timeout_s:.0f} s")
    finally:
        c.close()


def check_decisions(kafka_bootstrap: str, names: dict[str, str], n: int, isolation: str) -> dict[str, Any]:
    decisions = [(m.key(), orjson.loads(m.value()))
                 for m in read_all(kafka_bootstrap, names["decisions"], expect=n, isolation=isolation)]
    labels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in read_all(kafka_bootstrap, names["labels"], expect=2 * n, isolation=isolation):
        lab = orjson.loads(m.value())
        labels[lab["event_id"]].append(lab)
    letters = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, names["dlq"], expect=n // 5,
                                                         isolation=isolation)]
    failed = {d["event_id"] for d in letters}
    assert {d["policy_id"] for d in letters} == {"long"} and len(failed) == len(range(0, n, 5))
    by_event = {d["event_id"]: (key, d) for key, d in decisions}
    assert len(by_event) == n == len(decisions)  # exactly one decision per event
    counts: dict[str, int] = defaultdict(int)
    for event_id, (key, d) in by_event.items():
        k = int(event_id[1:])
        assert key == f"k{k}".encode()  # keyed like the input
        assert d["action"] == expected_action(labels[event_id], event_id in failed), (event_id, d, labels[event_id])
        reasons = {r["policy_id"]: r for r in d["reasons"]}
        assert set(reasons) == ({"spam", "fake-reviews", "long"} if k % 5 == 0 else {"spam", "fake-reviews"})
        for lab in labels[event_id]:
            assert reasons[lab["policy_id"]]["label_id"] == lab["label_id"]
        if event_id in failed:
            assert reasons["long"]["decided_by"] == "dead_letter" and reasons["long"]["violation"] is None
        assert d["metadata"] == {"author_id": f"a{k % 7}"} and d["source"]["topic"] == names["input"]
        counts[d["action"]] += 1
    return dict(counts)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_every_event_gets_the_decision_its_labels_and_rules_give(delivery, kafka_bootstrap, topics, sims,
                                                                       answer_key, tmp_path) -> None:
    n = 120
    extra: dict[str, Any] = {"delivery": delivery}
    if delivery == "exactly_once":
        extra["kafka"] = {"transactional_id": f"tx-{tmp_path.name}"}
    names, path = setup(tmp_path, kafka_bootstrap, topics, sims, answer_key, n, **extra)
    await run_consumer(load_settings(path), until_idle=3.0)
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    counts = check_decisions(kafka_bootstrap, names, n, isolation)
    print(f"\ndecisions ({delivery}, {n} events): {counts}")
    assert set(counts) == {"hide", "block", "review", "allow"}  # every branch of the rules was taken


def test_sigkill_mid_stream_then_restart_every_event_decided_duplicates_share_the_id(
        kafka_bootstrap, topics, sims, answer_key, consumers, tmp_path) -> None:
    n = 400
    # Half the input is held back until after the kill: the stream cannot end before it however fast
    # the machine; the kill comes once commits have landed (progress, not a timer).
    names, path = setup(tmp_path, kafka_bootstrap, topics, sims, answer_key, n, time_scale=5.0, release=n // 2,
                        batching={"commit_interval_s": 0.3})
    consumer = consumers(path)

    def decided(msgs: list) -> set[str]:
        return {orjson.loads(m.value())["event_id"] for m in msgs}

    wait_committed(kafka_bootstrap, f"g-{names['input']}", names["input"], 60)  # progress: commits landed
    consumer.kill()
    written = read_all(kafka_bootstrap, names["decisions"], expect=10 * n, timeout_s=3)  # all the killed one wrote
    before, ends = decided(written), high_watermarks(written)
    assert 60 <= len(before) <= n // 2, "the kill did not land mid-stream"
    produce(kafka_bootstrap, names["input"], content_events(n)[n // 2:])
    consumer.start()
    read_until(kafka_bootstrap, names["decisions"], lambda m: len(decided(m)) >= n, timeout_s=240)
    assert consumer.terminate() == 0
    final = read_all(kafka_bootstrap, names["decisions"], expect=10 * n, timeout_s=5)
    again = decided([m for m in final if m.offset() >= ends.get(m.partition(), 0)]) & before
    assert len(again) < len(before), "the restart decided everything again (nothing was committed)"
    records = [orjson.loads(m.value()) for m in final]
    ids: dict[str, set[str]] = defaultdict(set)
    for d in records:
        ids[d["event_id"]].add(d["decision_id"])
    assert len(ids) == n and all(len(v) == 1 for v in ids.values())  # duplicates carry the same id
    print(f"\ndecisions after a SIGKILL: {len(before)} events decided before it, {len(again)} of them again after "
          f"the restart; {len(records)} records for {n} events, duplicates all with their event's decision_id")
