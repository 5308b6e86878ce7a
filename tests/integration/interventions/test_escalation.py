"""Escalation on the real broker: faust-streaming tables over the labels, one escalation per
(actor, policy, window) through restarts of the consumer and of the escalation app, and through a
SIGKILL mid-window."""

from __future__ import annotations

import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.app import run_consumer
from streams.authoring.datasets import load_dataset
from streams.config import load_settings
from streams.devtools.broker import create_topics
from streams.wire.events import label_id, utc_now
from tests.integration.helpers import (
    ROOT,
    frozen,
    open_transaction_records,
    produce,
    read_all,
    read_to_end,
    read_until,
    write_config,
)

# the demo's subset: also run on the embedded broker (make test-embedded)
pytestmark = pytest.mark.embedded

WINDOW_S = 10**9  # one window from 2001-09-09 to 2033-05-18: no test straddles a window boundary
GOLDEN = ROOT / "policies/fake-reviews.golden.jsonl"


def escalation_config(tmp_path: Path, bootstrap: str, names: dict[str, str], urls: list[str], *,
                      guarantee: str = "at_least_once", **extra: Any) -> Path:
    return write_config(tmp_path, bootstrap, names, urls,
                        escalation={"actor_field": "author_id", "threshold": 3, "window_s": WINDOW_S,
                                    "topic": names["escalations"], "processing_guarantee": guarantee}, **extra)


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


def assert_refused(consumers: Any, path: Path) -> None:
    """On a broker without full transactions (the embedded Tansu: aiokafka's transactional producer
    is refused), exactly-once stops at start-up, non-zero, saying why."""
    refused = consumers(path, "escalate", "--until-idle", "1")
    assert refused.wait(120) != 0 and "refused a transactional producer" in refused.log(), refused.log()[-3000:]


def await_escalations(bootstrap: str, topic: str, actors: set[str], alive: Any, *, every: bool = False) -> None:
    """Wait until one (``every``: each) of ``actors`` has an escalation on the topic, committed or not
    (read_uncommitted), or until ``alive()`` is false. Progress, not a timer: the 3 minutes are a
    bound, and the caller asserts what it needs afterwards."""

    def done(messages: list[Any]) -> bool:
        seen = {orjson.loads(m.value())["actor"] for m in messages}
        return (actors <= seen if every else bool(actors & seen)) or not alive()

    read_until(bootstrap, topic, done, timeout_s=180)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_sigkill_mid_window_then_restart_loses_no_escalation(guarantee, kafka_bootstrap, topics, consumers, tmp_path,
                                                             broker_hides_aborted) -> None:
    """Labels written straight to the labels topic, in parts the test holds back. 150 actors stay
    one violation short until the last part (their tallies are mid-window through every kill); each
    part brings 50 more actors to the threshold. Three lives of the app are SIGKILLed, each once it
    has escalated an actor of the latest part and before the next part exists: every kill lands
    mid-stream, on progress the test controls, whatever the machine's speed. The app is frozen
    (SIGSTOP) before the kill, so nothing it has written can be committed while it dies; under
    exactly-once its open transaction is then aborted by the next life. A last life reads the rest:
    every actor escalates, under one id, naming exactly its three events (labels read again after a
    kill never count twice); under exactly-once a read_committed reader sees each escalation once.
    On a broker without full transactions (Tansu) exactly-once refuses to start, saying why."""
    names = escalation_topics(kafka_bootstrap, topics)
    path = escalation_config(tmp_path, kafka_bootstrap, names, ["http://127.0.0.1:9/v1"],  # no replica needed
                             guarantee=guarantee)
    exactly_once = guarantee == "exactly_once"
    if exactly_once and not broker_hides_aborted:
        assert_refused(consumers, path)
        return
    pending = [f"pend{i}" for i in range(150)]
    parts = [[f"done{k}-{i}" for i in range(50)] for k in range(4)]

    def part(k: int) -> list[tuple[bytes, bytes]]:
        out = [label(a, n) for n in range(3) for a in parts[k]] + [label(f"noise{k}-{i}", 0, violation=False)
                                                                  for i in range(40)]
        return out + [label(a, n) for n in range(2) for a in pending] if k == 0 else out

    open_at_kill = []
    for k in range(3):
        produce(kafka_bootstrap, names["labels"], part(k))
        app = consumers(path, "escalate")
        await_escalations(kafka_bootstrap, names["escalations"], set(parts[k]), app.alive)
        assert app.alive(), app.log()[-3000:]
        assert app.proc is not None
        with frozen([app.proc.pid]):  # it cannot commit what it has written while it is being killed
            open_at_kill.append(open_transaction_records(kafka_bootstrap, names["escalations"]))
            app.kill()
    produce(kafka_bootstrap, names["labels"], part(3) + [label(a, 2) for a in pending])
    run_escalate(consumers, path, idle_s=5.0)
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    found = [orjson.loads(m.value()) for m in read_to_end(kafka_bootstrap, names["escalations"], isolation=isolation)]
    ids: dict[str, set[str]] = defaultdict(set)
    for e in found:
        ids[e["actor"]].add(e["escalation_id"])
        assert sorted(e["event_ids"]) == [f"{e['actor']}-e{n}" for n in range(3)] and e["count"] == 3, e
    actors = {a for p in parts for a in p} | set(pending)
    assert set(ids) == actors, sorted(actors ^ set(ids))
    assert all(len(v) == 1 for v in ids.values())  # a duplicate only ever repeats its id
    if exactly_once:
        assert len(found) == len(actors), f"{len(found) - len(actors)} escalations seen twice by read_committed"
    written = len(read_to_end(kafka_bootstrap, names["escalations"]))
    print(f"\nescalation SIGKILL ({guarantee}): 3 kills mid-stream, escalations in open transactions at each kill "
          f"{open_at_kill}; {len(found)} records ({isolation}) for {len(ids)} (actor, policy, window) keys, "
          f"{written} written in all (duplicates and aborted writes included)")


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
    done = asyncio.create_task(service._changelog_written())  # at-least-once: confirmed per record
    await asyncio.sleep(0.3)
    assert not done.done(), "the ticket was done before its changelog record was acknowledged"
    delivered.set_result(None)
    await asyncio.wait_for(done, 5)
    assert service._changelog_sent == []


@pytest.mark.timeout(900)  # about 75 s; four times that beside a CI run, two engines and a CPU hog
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_members_joining_and_dying_mid_stream_lose_no_escalation(guarantee, kafka_bootstrap, topics, consumers,
                                                                 tmp_path, broker_hides_aborted) -> None:
    """Rebalances while the app has labels fetched but not yet processed: a second member joins
    mid-stream (the first member's partitions are revoked and reassigned), then is SIGKILLed once it
    has escalated an actor itself (its session expires: another rebalance; under exactly-once the
    next owner's producers fence the dead one's and abort its open transactions). faust skips the
    messages it fetched in an older generation; none of them may count as processed. Every one of
    the 1000 actors escalates, each under one id; under exactly-once, each committed once (a rebalance
    restarts a member from the committed state: docs/interventions.md, "Exactly once"). The stream
    comes in waves of 20 actors, each produced once the one before has escalated, until the second
    member is serving and has escalated an actor; the rest only after the kill. So the rebalances and
    the kill land mid-stream on progress the test controls."""
    names = escalation_topics(kafka_bootstrap, topics)
    path = escalation_config(tmp_path, kafka_bootstrap, names, ["http://127.0.0.1:9/v1"], guarantee=guarantee)
    if guarantee == "exactly_once" and not broker_hides_aborted:
        assert_refused(consumers, path)
        return
    actors = [f"a{i}" for i in range(1000)]

    def wave(lo: int, hi: int) -> None:  # actor by actor: escalations all along the stream, not in a last wave
        produce(kafka_bootstrap, names["labels"], [m for i in range(lo, hi) for m in (
            *(label(actors[i], n) for n in range(3)), label(f"noise{i}", 0, violation=False))])

    wave(0, 300)
    first = consumers(path, "escalate")
    await_escalations(kafka_bootstrap, names["escalations"], set(actors[:300]), first.alive)
    second = consumers(path, "escalate")
    produced = 300
    for step in ("escalation service ready", "escalation actor="):  # the second member serves, then escalates
        while step not in second.log():
            assert first.alive() and second.alive(), (first.log()[-2000:], second.log()[-3000:])
            if produced == 900:  # out of waves: whatever is still to come comes from what was produced
                wait = time.monotonic() + 180
                while step not in second.log() and second.alive() and time.monotonic() < wait:
                    time.sleep(0.2)
                assert step in second.log(), second.log()[-3000:]
                break
            wave(produced, produced + 20)
            await_escalations(kafka_bootstrap, names["escalations"], set(actors[produced:produced + 20]),
                              lambda: first.alive() and second.alive(), every=True)
            produced += 20
    second.kill()
    wave(produced, len(actors))  # the rest of the stream comes after the kill
    assert first.alive(), first.log()[-3000:]
    assert first.terminate() == 0, first.log()[-3000:]
    run_escalate(consumers, path, idle_s=5.0)  # whatever the first member left, a restart finishes
    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    found = [orjson.loads(m.value()) for m in read_to_end(kafka_bootstrap, names["escalations"], isolation=isolation)]
    ids: dict[str, set[str]] = defaultdict(set)
    for e in found:
        ids[e["actor"]].add(e["escalation_id"])
        assert sorted(e["event_ids"]) == [f"{e['actor']}-e{n}" for n in range(3)] and e["count"] == 3, e
    assert sorted(set(actors) - set(ids)) == []
    assert all(len(v) == 1 for v in ids.values())
    twice = sorted(a for a, n in Counter(e["actor"] for e in found).items() if n > 1)
    print(f"\nescalation rebalances ({guarantee}): second member killed after {produced} actors were produced; "
          f"{len(found)} records ({isolation}) for {len(ids)} actors, {len(found) - len(ids)} twice: "
          f"{twice}")
    if guarantee == "exactly_once":
        assert twice == [], f"committed twice: {twice}"


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
