"""Escalation on the real broker: faust-streaming tables over the labels, one escalation per
(actor, policy, window) through restarts of the consumer and of the escalation app, and through a
SIGKILL mid-window."""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from streams.app import run_consumer
from streams.authoring.datasets import load_dataset
from streams.config import load_settings
from streams.devtools.broker import create_topics
from streams.wire.events import label_id, utc_now
from tests.integration.helpers import ROOT, produce, read_all, read_until, write_config

WINDOW_S = 10**9  # one window from 2001-09-09 to 2033-05-18: no test straddles a window boundary
GOLDEN = ROOT / "policies/fake-reviews.golden.jsonl"


def escalation_config(tmp_path: Path, bootstrap: str, names: dict[str, str], urls: list[str], **extra: Any) -> Path:
    return write_config(tmp_path, bootstrap, names, urls,
                        escalation={"actor_field": "author_id", "threshold": 3, "window_s": WINDOW_S,
                                    "topic": names["escalations"]}, **extra)


def escalation_topics(kafka_bootstrap: str, topics: Any) -> dict[str, str]:
    names = topics(partitions=3)
    names["escalations"] = names["labels"].replace("labels-", "esc-")
    create_topics(kafka_bootstrap, {names["escalations"]: 1})
    return names


def escalations(bootstrap: str, topic: str, timeout_s: float = 3.0, *, expect: int = 0) -> list[dict[str, Any]]:
    """The escalations on the topic: read for ``timeout_s``, or, given ``expect``, until that many
    arrived (at most a minute: a loaded machine reads slowly) and then ``timeout_s`` more for any
    beyond them."""
    start, enough_at = time.monotonic(), None

    def done(messages: list[Any]) -> bool:
        nonlocal enough_at
        now = time.monotonic()
        if enough_at is None and len(messages) >= expect:
            enough_at = now
        return now - enough_at >= timeout_s if enough_at is not None else now - start >= 60

    return [orjson.loads(m.value()) for m in read_until(bootstrap, topic, done, timeout_s=90)]


def run_escalate(consumers: Any, path: Path, idle_s: float = 3.0) -> None:
    proc = consumers(path, "escalate", "--until-idle", str(idle_s))
    assert proc.wait(180) == 0, proc.log()[-3000:]


def test_an_actor_straddling_restarts_of_both_services_escalates_once(kafka_bootstrap, topics, sims, answer_key,
                                                                      consumers, tmp_path) -> None:
    """Real labels (consumer + simulated model). Phase 1, then both services stop; phase 2 after
    both restart. 'ring' has 2 then 1 violations (3: once), 'fast' 3 then 2 (once, in phase 1),
    'near' 1 then 1 (never), 'honest' only safe reviews (never)."""
    import asyncio

    names = escalation_topics(kafka_bootstrap, topics)
    items = load_dataset(GOLDEN).items
    bad = [i.text for i in items if i.label == 1]
    good = [i.text for i in items if i.label == 0]
    url = sims(1, answer_key=answer_key([{"text": i.text, "label": i.label} for i in items]),
               time_scale=100.0).urls[0]
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies/fake-reviews.md", policies / "fake-reviews.md")
    path = escalation_config(tmp_path, kafka_bootstrap, names, [url], cache={"max_entries": 0},
                             policies={"dir": str(policies), "default": ["fake-reviews"]})
    plan = {1: {"ring": 2, "fast": 3, "near": 1, "honest": 0}, 2: {"ring": 1, "fast": 2, "near": 1, "honest": 0}}
    events: dict[str, list[str]] = defaultdict(list)
    k = 0
    for phase in (1, 2):
        batch = []
        for actor, violations in plan[phase].items():
            for j in range(violations + 2):  # two safe reviews each as well
                text = bad[k % len(bad)] if j < violations else good[k % len(good)]
                batch.append((f"k{k}".encode(), orjson.dumps({"event_id": f"e{k}", "kind": "review", "text": text,
                                                              "metadata": {"author_id": actor}})))
                if j < violations:
                    events[actor].append(f"e{k}")
                k += 1
        produce(kafka_bootstrap, names["input"], batch)
        asyncio.run(run_consumer(load_settings(path), until_idle=3.0))
        run_escalate(consumers, path)
        found = escalations(kafka_bootstrap, names["escalations"], expect=phase)
        if phase == 1:
            assert [e["actor"] for e in found] == ["fast"]
    labels = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, names["labels"], expect=k)]
    assert sum(lab["violation"] for lab in labels) == sum(len(v) for v in events.values())  # the model agreed
    by_actor = {e["actor"]: e for e in found}
    assert len(found) == 2 and set(by_actor) == {"ring", "fast"}, found
    assert sorted(by_actor["ring"]["event_ids"]) == sorted(events["ring"]) and by_actor["ring"]["count"] == 3
    assert set(by_actor["fast"]["event_ids"]) < set(events["fast"]) and by_actor["fast"]["count"] == 3
    assert all(e["policy_id"] == "fake-reviews" for e in found)
    print(f"\nescalation across restarts: {k} events, violations by actor "
          f"{ {a: len(v) for a, v in events.items()} }, escalations {sorted(by_actor)} (expected ['fast', 'ring'])")


def label(actor: str, n: int, *, violation: bool = True) -> tuple[bytes, bytes]:
    event_id = f"{actor}-e{n}"
    return (event_id.encode(), orjson.dumps({
        "schema_version": 1, "label_id": label_id(event_id, "spam", "1-abcdef01"), "event_id": event_id,
        "policy_id": "spam", "policy_version": "1-abcdef01", "violation": violation, "decided_by": "model",
        "metadata": {"author_id": actor}, "labeled_at": utc_now()}))


def test_sigkill_mid_window_then_restart_loses_no_escalation(kafka_bootstrap, topics, consumers, tmp_path) -> None:
    """Labels written straight to the labels topic. Phase 1: 150 actors reach the threshold, 150
    stop one short (their tallies are mid-window). SIGKILL as soon as the first escalation appears,
    restart, phase 2 gives the 150 their third violation: 300 escalations, each actor's one id,
    each naming exactly its actor's three events (the labels read again after the kill never count
    twice). The kill lands mid-stream by construction, whatever the machine's speed: the labels of
    the last 50 actors to reach the threshold are produced only after it."""
    names = escalation_topics(kafka_bootstrap, topics)
    path = escalation_config(tmp_path, kafka_bootstrap, names, ["http://127.0.0.1:9/v1"])  # no replica needed
    done = [f"done{i}" for i in range(150)]
    pending = [f"pend{i}" for i in range(150)]
    phase1 = []
    for n in range(3):
        phase1 += [label(a, n) for a in done[:100]] + [label(a, n) for a in pending if n < 2]
        phase1 += [label(f"noise{i}", n, violation=False) for i in range(40)]
    produce(kafka_bootstrap, names["labels"], phase1)
    app = consumers(path, "escalate")
    seen = read_until(kafka_bootstrap, names["escalations"], lambda m: len(m) >= 1 or not app.alive(),
                      timeout_s=120)
    assert app.alive(), app.log()[-3000:]
    app.kill()
    before = escalations(kafka_bootstrap, names["escalations"], timeout_s=2)
    assert seen and not {e["actor"] for e in before} & set(done[100:])  # those were not even produced yet
    produce(kafka_bootstrap, names["labels"], [label(a, n) for n in range(3) for a in done[100:]])
    produce(kafka_bootstrap, names["labels"], [label(a, 2) for a in pending])
    run_escalate(consumers, path, idle_s=5.0)
    found = escalations(kafka_bootstrap, names["escalations"], expect=len(done) + len(pending))
    ids: dict[str, set[str]] = defaultdict(set)
    for e in found:
        ids[e["actor"]].add(e["escalation_id"])
        assert sorted(e["event_ids"]) == [f"{e['actor']}-e{n}" for n in range(3)] and e["count"] == 3, e
    assert set(ids) == set(done) | set(pending), sorted(set(done) | set(pending) - set(ids))
    assert all(len(v) == 1 for v in ids.values())  # a duplicate only ever repeats its id
    print(f"\nescalation SIGKILL: {len(before)} escalations before the kill, {len(found)} records after the "
          f"restart for {len(ids)} (actor, policy, window) keys, {len(found) - len(ids)} duplicates (same id)")


async def test_a_ticket_is_done_only_once_its_changelog_record_is_acknowledged(kafka_bootstrap, topics,
                                                                               tmp_path) -> None:
    """faust's producer.flush() can return with a table write still unsent (its buffer stops waiting
    after 0.1 s, and the record its sender task holds is in no queue): the tally agent waits for the
    changelog record's own future instead. Here the flush is a no-op and the record's delivery is
    held back: the wait must last until the record is acknowledged."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from streams.interventions.escalate import EscalationApp, EscalationMetrics

    names = escalation_topics(kafka_bootstrap, topics)
    settings = load_settings(escalation_config(tmp_path, kafka_bootstrap, names, ["http://127.0.0.1:9/v1"]))
    service = EscalationApp(settings, EscalationMetrics(CollectorRegistry()), datadir=str(tmp_path))
    delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    table = service.tallies.table
    table.changelog_topic.send_soon = lambda **kwargs: delivered  # the record, not yet acknowledged

    async def flush_that_gives_up() -> None:
        return None

    service.app.producer.flush = flush_that_gives_up  # type: ignore[method-assign]
    table.send_changelog(0, b"actor\x1fspam", {"ids": ["l1"]})  # what a table write does
    done = asyncio.create_task(service._changelog_acked())
    await asyncio.sleep(0.3)
    assert not done.done(), "the ticket was done before its changelog record was acknowledged"
    delivered.set_result(None)
    await asyncio.wait_for(done, 5)
    assert service._changelog_sent == []


def test_members_joining_and_dying_mid_stream_lose_no_escalation(kafka_bootstrap, topics, consumers,
                                                                 tmp_path) -> None:
    """Rebalances while the app has labels fetched but not yet processed: a second member joins
    mid-stream (the first member's partitions are revoked and reassigned), then is SIGKILLed (its
    session expires: another rebalance). faust skips the messages it fetched in an older
    generation; none of them may count as processed. Every one of the 1000 actors escalates, each
    under one id. The stream is produced in waves the test controls: while the second member
    joins, new actors keep arriving, and the last ones are produced only after the kill, so the
    rebalances land mid-stream whatever the machine's speed."""
    names = escalation_topics(kafka_bootstrap, topics)
    path = escalation_config(tmp_path, kafka_bootstrap, names, ["http://127.0.0.1:9/v1"])
    actors = [f"a{i}" for i in range(1000)]

    def wave(lo: int, hi: int) -> None:  # actor by actor: escalations all along the stream, not in a last wave
        produce(kafka_bootstrap, names["labels"], [m for i in range(lo, hi) for m in (
            *(label(actors[i], n) for n in range(3)), label(f"noise{i}", 0, violation=False))])

    wave(0, 300)
    first = consumers(path, "escalate")
    read_until(kafka_bootstrap, names["escalations"], lambda m: len(m) >= 1 or not first.alive(), timeout_s=120)
    second = consumers(path, "escalate")
    joined, produced = time.monotonic(), 300
    while "Successfully synced group" not in second.log() and time.monotonic() - joined < 60 and second.alive():
        if produced < 700:  # labels keep arriving while the group rebalances
            wave(produced, produced + 20)
            produced += 20
        time.sleep(0.1)
    assert second.alive() and "Successfully synced group" in second.log(), second.log()[-3000:]
    second.kill()
    mid = escalations(kafka_bootstrap, names["escalations"], timeout_s=2)
    wave(produced, len(actors))  # the rest of the stream comes after the kill
    assert first.alive(), first.log()[-3000:]
    assert first.terminate() == 0, first.log()[-3000:]
    run_escalate(consumers, path, idle_s=5.0)  # whatever the first member left, a restart finishes
    found = escalations(kafka_bootstrap, names["escalations"], expect=len(actors))
    ids: dict[str, set[str]] = defaultdict(set)
    for e in found:
        ids[e["actor"]].add(e["escalation_id"])
        assert sorted(e["event_ids"]) == [f"{e['actor']}-e{n}" for n in range(3)] and e["count"] == 3, e
    assert sorted(set(actors) - set(ids)) == []
    assert all(len(v) == 1 for v in ids.values())
    print(f"\nescalation rebalances: {len(mid)} escalations before the second member died, {len(found)} records "
          f"in the end for {len(ids)} actors, {len(found) - len(ids)} duplicates (same id)")


async def test_a_restart_whose_seek_to_committed_is_slow_loses_no_label(kafka_bootstrap, topics, tmp_path,
                                                                        monkeypatch) -> None:
    """After restoring its tables, faust resumes the input partitions and then seeks them to the
    committed offsets. A fetch that runs while the seek is still under way (a coordinator slow to
    answer under load) delivered records from before the seek, the seek then rewound the fetcher's
    read offset, and the fetcher took the jump for a gap in the log: the first labels after the
    committed offset counted as processed without ever reaching an agent (seen as lost escalations
    after a restart). Here every seek takes a second: each of the 60 actors' third label still
    counts after the restart."""
    import asyncio

    from faust.transport.drivers import aiokafka as faust_aiokafka
    from prometheus_client import CollectorRegistry

    from streams.interventions.escalate import run_escalation

    names = escalation_topics(kafka_bootstrap, topics)
    settings = load_settings(escalation_config(tmp_path, kafka_bootstrap, names, ["http://127.0.0.1:9/v1"]))
    actors = [f"slow{i}" for i in range(60)]
    produce(kafka_bootstrap, names["labels"], [label(a, n) for n in range(2) for a in actors])
    await run_escalation(settings, until_idle=2.0, registry=CollectorRegistry())
    assert escalations(kafka_bootstrap, names["escalations"], timeout_s=1) == []

    seek = faust_aiokafka.Consumer.seek_to_committed

    async def slow_seek(self: Any) -> Any:
        await asyncio.sleep(1.0)
        return await seek(self)

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", slow_seek)
    produce(kafka_bootstrap, names["labels"], [label(a, 2) for a in actors])
    registry = CollectorRegistry()
    await run_escalation(settings, until_idle=3.0, registry=registry)
    counted = registry.get_sample_value("safeguard_escalation_labels_total", {"outcome": "counted"})
    found = escalations(kafka_bootstrap, names["escalations"], expect=len(actors))
    assert sorted({e["actor"] for e in found}) == sorted(actors), (counted, len(found))
    assert counted == len(actors)
