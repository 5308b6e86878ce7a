"""Never lose an event: crashes, replica outages, rebalances (issue: delivery and faults).

Each scenario runs real consumer processes on the real broker against simulated replicas over HTTP
and checks the outcome a user would check: every event labelled, nothing dead-lettered because GPUs
were down, and (exactly_once) every label seen exactly once by a read_committed reader.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streams.devtools.broker import free_port
from tests.integration.helpers import (
    TransactionProbe,
    frozen,
    group_committed,
    open_transaction_records,
    produce,
    read_all,
    read_to_end,
    read_until,
    wait_metric,
    write_config,
)

N_KILL = 2000


def events(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), orjson.dumps({"event_id": f"e{i}", "text": f"fault test message {i}"}))
            for i in range(n)]


def label_ids(bootstrap: str, topic: str, distinct: int, *, isolation: str, timeout_s: float = 120) -> Counter:
    """Labels per event id, read until ``distinct`` events have one (duplicates do not count)."""
    def enough(msgs: list) -> bool:
        return len({orjson.loads(m.value())["event_id"] for m in msgs}) >= distinct
    msgs = read_until(bootstrap, topic, enough, timeout_s=timeout_s, isolation=isolation)
    return Counter(orjson.loads(m.value())["event_id"] for m in msgs)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_three_sigkills_mid_stream(delivery, kafka_bootstrap, topics, sims, consumers, broker_hides_aborted,
                                   tmp_path: Path) -> None:
    """Each kill lands on progress the test controls, so no machine can finish before it or miss it.
    The input comes in five parts: one at the start, one just before each kill (so the consumer has
    work when it dies) and the last only after the third, so the stream cannot end before it. At
    least once: before each kill the group has committed input offsets since the restart (so the
    restart has less to do), and the kill comes while the replicas are frozen (SIGSTOP) holding
    requests of the consumer. Exactly once: kills one and three likewise wait for a commit, then the
    consumer is frozen while the test looks at the labels topic and killed frozen once that topic
    holds records of its open transaction (behind the last stable offset). Kill two lands inside a
    commit: the consumer's second life stops itself at a failpoint after the input offsets went into
    the transaction and before it commits, and dies there; the offsets and the labels must go
    together (a consumer committing offsets outside the transaction loses those events here). Each
    restart re-labels only what was not committed yet: fewer events than were labelled before."""
    names = topics(partitions=3)
    replicas = sims(2, time_scale=2.0)
    stream = events(N_KILL)
    part = N_KILL // 5
    port = free_port()
    exactly_once = delivery == "exactly_once"
    group = f"g-{names['input']}"
    config = write_config(tmp_path, kafka_bootstrap, names, replicas.urls, delivery=delivery,
                          kafka=_kafka(kafka_bootstrap, names, transactional_id=f"tx-{names['input']}"),
                          batching={"commit_interval_s": 2.0 if exactly_once else 0.3}, metrics={"port": port})
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    produce(kafka_bootstrap, names["input"], stream[:part])
    consumer = consumers(config)
    kills: list[tuple[set[str], dict[int, int]]] = []  # per kill: events labelled before it, label log ends
    in_transaction = []  # per kill (exactly once): records its open transaction held
    committed_at_kill = 0  # input offsets the group had committed when the last consumer died
    for k in range(3):
        released = (k + 1) * part
        in_commit = exactly_once and k == 1
        assert consumer.proc is not None
        if in_commit:
            produce(kafka_bootstrap, names["input"], stream[released:released + part])
            wait_for(lambda: consumer.stopped() or not consumer.alive(), "the consumer stop at its failpoint")
            assert consumer.alive() and "failpoint eos-offsets-sent reached" in consumer.log()
            # its labels may still sit in the client's buffer (the commit flushes them): not asserted
            in_transaction.append(open_transaction_records(kafka_bootstrap, names["labels"]))
            consumer.kill()
        else:
            label_ids(kafka_bootstrap, names["labels"], released - part // 2, isolation="read_uncommitted")
            wait_for(lambda floor=committed_at_kill: group_committed(kafka_bootstrap, group, names["input"]) > floor,
                     f"the group commit input offsets since the restart (kill {k + 1}, above {committed_at_kill})")
        if exactly_once and not in_commit:
            produce(kafka_bootstrap, names["input"], stream[released:released + part])
            with TransactionProbe(kafka_bootstrap, names["labels"]) as probe:
                deadline = time.monotonic() + 120
                while True:
                    with frozen([consumer.proc.pid]):
                        held = probe.open_records()
                        if held:
                            consumer.kill()  # frozen: it dies holding exactly what the probe saw
                            break
                    assert time.monotonic() < deadline, "never saw labels in an open transaction while the " \
                        "consumer had a part of the input to label (are labels written outside transactions?)"
                    time.sleep(0.05)
            in_transaction.append(held)
        elif not exactly_once:
            with frozen([proc.pid for proc in replicas.procs]):
                produce(kafka_bootstrap, names["input"], stream[released:released + part])
                wait_metric(port, "safeguard_inflight_requests", lambda held: held > 0)  # work in flight
                consumer.kill()
        before = read_to_end(kafka_bootstrap, names["labels"])  # everything the killed process wrote
        labelled = {orjson.loads(m.value())["event_id"] for m in before}
        assert 0 < len(labelled) < N_KILL, "the kill did not land mid-stream"
        kills.append((labelled, high_watermarks(before)))
        committed_at_kill = group_committed(kafka_bootstrap, group, names["input"])
        consumer.start(failpoints="eos-offsets-sent" if exactly_once and k == 0 else "")
    produce(kafka_bootstrap, names["input"], stream[4 * part:])
    # the group committing the whole input is the end (labels committed with or before it); then a
    # missing label is a clear failure rather than a wait for a label that never comes
    wait_for(lambda: group_committed(kafka_bootstrap, group, names["input"]) >= N_KILL,
             "the group commit the whole input", timeout_s=200)
    assert consumer.terminate() == 0
    final = Counter(orjson.loads(m.value())["event_id"]
                    for m in read_to_end(kafka_bootstrap, names["labels"], isolation=isolation))
    missing = {f"e{i}" for i in range(N_KILL)} - set(final)
    assert not missing, f"{len(missing)} events have no label (input offsets committed without their labels)"
    records = read_to_end(kafka_bootstrap, names["labels"])
    for i, (labelled, ends) in enumerate(kills, 1):
        again = {orjson.loads(m.value())["event_id"] for m in records if m.offset() >= ends.get(m.partition(), 0)}
        relabelled = labelled & again
        assert len(relabelled) < len(labelled), f"kill {i}: the restart labelled everything again (no commits?)"
    dlq = read_all(kafka_bootstrap, names["dlq"], expect=1, timeout_s=1)
    assert dlq == []
    if not exactly_once:
        report(f"3 SIGKILLs, {delivery}", N_KILL, final, len(dlq))
        return
    committed = Counter(orjson.loads(m.value())["event_id"]
                        for m in read_to_end(kafka_bootstrap, names["labels"], isolation="read_committed"))
    report(f"3 SIGKILLs, {delivery}, label records in the open transaction at each kill {in_transaction}",
           N_KILL, committed, len(dlq))
    if not broker_hides_aborted:
        pytest.xfail("the embedded broker shows aborted records to read_committed readers (test_broker_conformance)")
    # kills 1 and 3 are probed; kill 2 landed inside a commit (the failpoint's line in the log, asserted above)
    assert in_transaction[0] and in_transaction[2], f"a kill landed outside a transaction holding labels: " \
        f"{in_transaction}"
    assert max(committed.values()) == 1 and sum(committed.values()) == N_KILL, \
        f"{sum(committed.values()) - N_KILL} labels seen twice by a read_committed reader"


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll ``condition``; the timeout is a bound on a broken run, never what the test checks."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def test_a_paused_zombie_is_fenced_and_its_work_never_visible(kafka_bootstrap, topics, sims, consumers,
                                                              broker_hides_aborted, broker_kind: str,
                                                              request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    """Exactly-once against a zombie: member A labels into a transaction it never commits on its own
    (commit interval of an hour), is paused (SIGSTOP) so its session expires and B takes its
    partitions and labels everything, then resumes with its transaction open. A's transaction must be
    aborted (fenced by the group generation when it tries to commit, or aborted when it learns its
    partitions were lost): a read_committed reader sees each label exactly once, although A's labels
    are in the log."""
    if broker_kind == "tansu":  # measured once (a full run on Tansu): not strict, nothing is known to hold there
        request.applymarker(pytest.mark.xfail(reason="the embedded broker: the successor did not commit the whole "
                                              "input within 3 minutes while the paused member's transaction was "
                                              "open, and aborted records are visible to read_committed readers"))
    n = 400
    names = topics(partitions=2)
    urls = sims(2, time_scale=5.0).urls
    produce(kafka_bootstrap, names["input"], events(n))

    def config(member: str, interval_s: float) -> Path:
        return write_config(tmp_path, kafka_bootstrap, names, urls, name=f"-{member}", delivery="exactly_once",
                            kafka=_kafka(kafka_bootstrap, names, transactional_id=f"tx-{names['input']}-{member}",
                                         librdkafka={"session.timeout.ms": 6000,
                                                     "transaction.timeout.ms": 300_000}),
                            batching={"commit_interval_s": interval_s})

    zombie = consumers(config("a", 3600.0))
    label_ids(kafka_bootstrap, names["labels"], n // 4, isolation="read_uncommitted")
    assert zombie.proc is not None
    group = f"g-{names['input']}"
    with frozen([zombie.proc.pid]):
        held = open_transaction_records(kafka_bootstrap, names["labels"])
        assert held > 0, "the zombie holds no labels in an open transaction: nothing to check"
        successor = consumers(config("b", 0.3))
        # B takes the partitions once A's session expires, labels everything, and commits its input
        # offsets in its transactions. (A read_committed reader cannot see B's labels yet: A's open
        # transaction holds the last stable offset back.)
        wait_for(lambda: group_committed(kafka_bootstrap, group, names["input"]) >= n,
                 "the successor committing the whole input", timeout_s=180)
    # A runs again from here with its transaction open: it must find out that its partitions are gone.
    wait_for(lambda: any(s in zombie.log() for s in ("lost partitions", "transaction aborted", "revoked partitions")),
             "the zombie noticing it lost its partitions", timeout_s=180)
    assert zombie.terminate() in (0, 1)
    assert successor.terminate() == 0
    visible = Counter(orjson.loads(m.value())["event_id"]
                      for m in read_to_end(kafka_bootstrap, names["labels"], isolation="read_committed"))
    everything = read_to_end(kafka_bootstrap, names["labels"])
    report("zombie paused past its session, then resumed", n, visible, 0)
    assert len(everything) >= n + held, "the zombie's labels are not in the log: nothing was checked"
    if not broker_hides_aborted:
        pytest.xfail("the embedded broker shows aborted records to read_committed readers")
    assert set(visible) == {f"e{i}" for i in range(n)} and max(visible.values()) == 1, \
        f"{sum(visible.values()) - n} labels visible twice: the zombie's transaction was committed"


def high_watermarks(records: list) -> dict[int, int]:
    """One past the last offset seen per partition."""
    ends: dict[int, int] = {}
    for m in records:
        ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
    return ends


def _kafka(bootstrap: str, names: dict[str, str], **extra: object) -> dict[str, object]:
    return {"bootstrap_servers": bootstrap, "group_id": f"g-{names['input']}", "input_topics": [names["input"]],
            "labels_topic": names["labels"], "dead_letter_topic": names["dlq"],
            "reasoning_topic": names["reasoning"], "librdkafka": {"session.timeout.ms": 6000}, **extra}


def report(scenario: str, n: int, labels: Counter, dead_letters: int) -> None:
    """One line per scenario for the issue's closing table (visible with pytest -s)."""
    dup = sum(labels.values()) - len(labels)
    print(f"\nSCENARIO {scenario}: events_in={n} labelled_events={len(labels)} label_records={sum(labels.values())} "
          f"duplicates={dup} dead_letters={dead_letters}")


def labelled_events(bootstrap: str, topic: str, distinct: int, timeout_s: float = 120) -> set[str]:
    return set(label_ids(bootstrap, topic, distinct, isolation="read_uncommitted", timeout_s=timeout_s))


def test_one_of_two_replicas_killed_then_restarted(kafka_bootstrap, topics, sims, consumers, tmp_path) -> None:
    n = 600
    names = topics(partitions=2)
    replicas = sims(2, time_scale=5.0)
    produce(kafka_bootstrap, names["input"], events(n))
    consumer = consumers(write_config(tmp_path, kafka_bootstrap, names, replicas.urls))
    labelled_events(kafka_bootstrap, names["labels"], n // 4)
    replicas.kill(0)
    wait_for_log(consumer, "taken out of rotation")  # the outage was noticed, while the other replica serves
    replicas.start_one(0)
    assert labelled_events(kafka_bootstrap, names["labels"], n) == {f"e{i}" for i in range(n)}
    wait_for_log(consumer, "back in rotation")
    assert consumer.terminate() == 0
    dlq = read_all(kafka_bootstrap, names["dlq"], expect=1, timeout_s=1)
    report("1 of 2 replicas killed and restarted", n, label_ids(kafka_bootstrap, names["labels"], n,
                                                                isolation="read_uncommitted"), len(dlq))
    assert dlq == []


def wait_for_log(consumer, text: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in consumer.log_path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.2)


def test_all_replicas_down_for_20s_pauses_and_resumes(kafka_bootstrap, topics, sims, consumers, tmp_path) -> None:
    n = 600
    names = topics(partitions=2)
    replicas = sims(2, time_scale=5.0)
    produce(kafka_bootstrap, names["input"], events(n))
    consumer = consumers(write_config(tmp_path, kafka_bootstrap, names, replicas.urls,
                                      batching={"max_inflight_events": 200}))
    before = labelled_events(kafka_bootstrap, names["labels"], n // 4)
    replicas.kill(0)
    replicas.kill(1)
    outage_start = time.monotonic()
    wait_for_log(consumer, "paused partitions: no healthy replica")
    during = labelled_events(kafka_bootstrap, names["labels"], n, timeout_s=1)
    time.sleep(max(0.0, 20 - (time.monotonic() - outage_start)))  # the scenario: 20 s without any GPU
    after_outage = labelled_events(kafka_bootstrap, names["labels"], n, timeout_s=1)
    assert during == after_outage, "labels appeared while every replica was down"
    assert len(after_outage) < n and len(before) <= len(after_outage)
    assert consumer.alive(), "the consumer must ride out the outage"
    replicas.start_one(0)
    replicas.start_one(1)
    assert labelled_events(kafka_bootstrap, names["labels"], n) == {f"e{i}" for i in range(n)}
    assert consumer.terminate() == 0
    dlq = read_all(kafka_bootstrap, names["dlq"], expect=1, timeout_s=1)
    report("all replicas down 20 s", n, label_ids(kafka_bootstrap, names["labels"], n, isolation="read_uncommitted"),
           len(dlq))
    assert dlq == []
    assert "resumed partitions" in consumer.log_path.read_text()


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_consumer_added_and_removed_under_load(delivery, kafka_bootstrap, topics, sims, consumers, tmp_path) -> None:
    n = 1500
    names = topics(partitions=6)
    replicas = sims(2, time_scale=3.0)
    urls = replicas.urls
    produce(kafka_bootstrap, names["input"], events(n))
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"

    def config(i: int) -> Path:
        return write_config(tmp_path, kafka_bootstrap, names, urls, name=f"-{i}", delivery=delivery,
                            kafka=_kafka(kafka_bootstrap, names, transactional_id=f"tx-{names['input']}-{i}"),
                            batching={"commit_interval_s": 0.3})

    group = [consumers(config(i)) for i in range(3)]
    label_ids(kafka_bootstrap, names["labels"], n // 5, isolation=isolation)
    # Scale up with work in flight: the replicas are frozen (SIGSTOP) while the group rebalances, so
    # the members giving partitions away hold unanswered requests for them. Let the rebalance finish
    # before the next step: on the embedded broker a member leaving during the second round of a
    # cooperative rebalance was seen to leave revoked partitions unassigned.
    with frozen([proc.pid for proc in replicas.procs]):
        group.append(consumers(config(3)))
        wait_for_log(group[3], "assigned partitions=in-", timeout_s=120)  # a loaded CI box is slow to rebalance
    label_ids(kafka_bootstrap, names["labels"], n // 2, isolation=isolation)
    assert group[0].terminate() == 0  # scale down: a graceful leave
    final = label_ids(kafka_bootstrap, names["labels"], n, isolation=isolation, timeout_s=240)
    assert set(final) == {f"e{i}" for i in range(n)}
    for c in group[1:]:
        assert c.terminate() == 0
    if delivery == "exactly_once":
        final = Counter(orjson.loads(m.value())["event_id"]
                        for m in read_to_end(kafka_bootstrap, names["labels"], isolation=isolation))
        assert max(final.values()) == 1 and sum(final.values()) == n, "a label was seen twice"
    dlq = read_all(kafka_bootstrap, names["dlq"], expect=1, timeout_s=1)
    report(f"3 consumers, +1 -1 under load, {delivery}", n, final, len(dlq))
    assert dlq == []


def test_slow_inference_never_evicts_the_consumer(kafka_bootstrap, topics, sims, consumers, tmp_path) -> None:
    """Requests far longer than max.poll.interval.ms: polling goes on, the member keeps its partitions."""
    n = 10
    names = topics(partitions=2)
    urls = sims(1, time_scale=0.3).urls  # slower than an H100: most requests take longer than 6 s
    produce(kafka_bootstrap, names["input"], events(n))
    kafka = _kafka(kafka_bootstrap, names)
    kafka["librdkafka"] = {"session.timeout.ms": 6000, "max.poll.interval.ms": 6000}
    consumer = consumers(write_config(tmp_path, kafka_bootstrap, names, urls, kafka=kafka))
    labels = label_ids(kafka_bootstrap, names["labels"], n, isolation="read_uncommitted", timeout_s=120)
    assert set(labels) == {f"e{i}" for i in range(n)} and max(labels.values()) == 1
    assert max(lab for lab in labels.values()) == 1
    log = consumer.log_path.read_text()
    assert consumer.terminate() == 0
    assert "revoked" not in log and "lost partitions" not in log  # never evicted while inference ran
    assert log.count("assigned partitions") == 1


def test_sigterm_drain_is_bounded(kafka_bootstrap, topics, sims, consumers, tmp_path) -> None:
    n = 40
    names = topics(partitions=2)
    urls = sims(1, time_scale=0.3).urls  # requests of several seconds: some run past the bound
    produce(kafka_bootstrap, names["input"], events(n))
    config = write_config(tmp_path, kafka_bootstrap, names, urls, batching={"drain_timeout_s": 1.0})
    consumer = consumers(config)
    label_ids(kafka_bootstrap, names["labels"], 1, isolation="read_uncommitted", timeout_s=60)
    assert consumer.terminate(timeout=120) == 0
    log = consumer.log_path.read_text()
    # The bound, not the slowest request, decides: the drain gave up with requests still running.
    assert "drain bound reached with" in log and "in_flight_abandoned=" in log
    restarted = consumers(config)  # abandoned events were not committed: the next run labels them
    labels = label_ids(kafka_bootstrap, names["labels"], n, isolation="read_uncommitted", timeout_s=120)
    assert set(labels) == {f"e{i}" for i in range(n)}
    assert restarted.terminate() == 0
