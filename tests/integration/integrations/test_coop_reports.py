"""Coop out on the real broker, against the fake Coop (tests/fake_coop.py: Coop's own schemas, key check
and answers): every decision whose action is reported reaches Coop once, with its item, across a
SIGKILL of the reasoning consumer (requests written twice), a Coop outage, a SIGKILL of the sender in
that outage, and a 429 storm; a request Coop refuses is a dead letter with Coop's answer."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.config import load_settings
from streams.devtools.broker import create_topics
from streams.integrations.coop_sender import run_coop_reports
from tests.fake_coop import FakeCoop
from tests.integration.helpers import produce, read_to_end
from tests.integration.interventions.test_decisions import content_events, setup, wait_committed

REPORTED = ["review", "block"]


@pytest.fixture
def coop():
    fake = FakeCoop().start()
    yield fake
    fake.stop()


def coop_config(coop: FakeCoop, outbox: str, **extra: Any) -> dict[str, Any]:
    return {"coop": {"url": coop.url, "api_key": coop.api_key, "item_type_id": "content-type",
                     "reporter": {"type_id": "service-user", "id": "safeguard"}, "report_actions": REPORTED,
                     "outbox_topic": outbox, **extra}}


def wait_for(what: str, done: Any, timeout_s: float = 180, *alive: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        for process in alive:
            assert process.alive(), f"{what}: a process died:\n{process.log()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.05)


def final_decisions(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    out = {}
    for m in read_to_end(bootstrap, topic):
        d = orjson.loads(m.value())
        out[d["event_id"]] = d
    return out


def test_reports_reach_coop_once_each_across_sigkills_an_outage_and_a_429_storm(
        kafka_bootstrap, topics, sims, answer_key, consumers, coop, tmp_path) -> None:
    n = 200
    outbox = f"coop-out-{tmp_path.name}"
    create_topics(kafka_bootstrap, {outbox: 3})
    names, path = setup(tmp_path, kafka_bootstrap, topics, sims, answer_key, n, time_scale=5.0, release=n // 2,
                        batching={"commit_interval_s": 0.3},
                        integrations=coop_config(coop, outbox, submit_items=True))
    group = load_settings(path).kafka.group_id
    coop.outage_after_reports = 12  # Coop goes down once it has taken 12 reports
    reasoning, sender = consumers(path), consumers(path, "coop", "reports")

    # 1. the reasoning consumer is SIGKILLed once it has committed part of the first half (the second half
    # exists only after the kill): what it had not committed is labelled, and its requests written, again
    wait_committed(kafka_bootstrap, group, names["input"], 30)
    reasoning.kill()
    decided = final_decisions(kafka_bootstrap, names["decisions"])
    assert 0 < len(decided) < n // 2, "the kill did not land mid-stream of the reasoning consumer"
    produce(kafka_bootstrap, names["input"], content_events(n)[n // 2:])
    reasoning.start()

    # 2. Coop is down: the sender retries the same report; SIGKILLed while it waits
    wait_for("the outage", lambda: coop.retries_in_outage >= 3, 180, sender)
    taken = len(coop.reports)
    sender.kill()
    assert taken == 12, taken

    # 3. Coop is back, behind a storm of 429s (Retry-After honoured); the sender restarts
    coop.outage, coop.storm, coop.storm_retry_after = False, 6, "0.2"
    sender.start()
    wait_for("every decision", lambda: len(final_decisions(kafka_bootstrap, names["decisions"])) == n, 300,
             reasoning)
    assert reasoning.terminate() == 0  # drained: every request it will ever write is on the outbox
    decisions = final_decisions(kafka_bootstrap, names["decisions"])
    expected = {e for e, d in decisions.items() if d["action"] in REPORTED}
    assert len(expected) < n and expected
    # the sender has committed the whole outbox: everything it will send is sent
    written = Counter(orjson.loads(m.value())["id"] for m in read_to_end(kafka_bootstrap, outbox))
    wait_committed(kafka_bootstrap, f"{group}-coop", outbox, sum(written.values()), timeout_s=300)
    assert sender.terminate() == 0

    counts = coop.counts()
    assert set(counts) == expected and max(counts.values()) == 1, [e for e, c in counts.items() if c > 1]
    items = Counter(i["id"] for i in coop.items)
    assert set(items) == set(decisions) and max(items.values()) == 1
    assert coop.requests[("/api/v1/report", 429)] + coop.requests[("/api/v1/items/async/", 429)] == 6
    assert coop.violations == []
    decided_at = {(d["event_id"], d["decided_at"]) for m in read_to_end(kafka_bootstrap, names["decisions"])
                  for d in [orjson.loads(m.value())]}
    for report in coop.reports:
        d = decisions[report["reportedItem"]["id"]]
        assert (d["event_id"], report["reportedAt"]) in decided_at  # one of its decision's copies (a replay's)
        assert report["reportedItem"]["typeId"] == "content-type"
        assert f"safeguard decided {d['action']}" in report["reportedForReason"]["reason"]
    print(f"\ncoop: {len(expected)} reports, {len(items)} items, once each; {taken} before the outage; "
          f"{sum(c - 1 for c in written.values())} requests written twice by the restarted consumer, sent once")


def write_requests(bootstrap: str, topic: str, requests: list[tuple[str, str, dict[str, Any]]]) -> None:
    produce(bootstrap, topic, [(f"{kind}/{ident}".encode(), orjson.dumps({"kind": kind, "id": ident,
                                                                          "event_id": ident, "body": body}))
                               for kind, ident, body in requests])


def report(item_id: str, text: str) -> dict[str, Any]:
    return {"reporter": {"kind": "user", "typeId": "service-user", "id": "safeguard"},
            "reportedAt": "2026-12-03T09:35:52.123Z", "reportedForReason": {"policyId": None, "reason": "test"},
            "reportedItem": {"id": item_id, "typeId": "content-type", "data": {"text": text}}}


async def test_requests_written_twice_are_sent_once_even_by_a_new_sender(kafka_bootstrap, topics, coop,
                                                                         tmp_path: Path) -> None:
    names = topics(partitions=1)
    outbox = f"coop-dup-{tmp_path.name}"
    create_topics(kafka_bootstrap, {outbox: 1})
    settings = load_settings(None, {"kafka": {"bootstrap_servers": kafka_bootstrap, "group_id": f"g-{outbox}",
                                              "dead_letter_topic": names["dlq"]},
                                    "integrations": coop_config(coop, outbox), "metrics": {"port": 0}})
    first = [("report", f"r{i}", report(f"e{i}", f"text {i}")) for i in range(20)]
    write_requests(kafka_bootstrap, outbox, first + first[5:15])  # a consumer's restart wrote 10 again
    await run_coop_reports(settings, until_idle=2.0)
    assert sorted(coop.counts().values()) == [1] * 20
    # a new sender (another process, after a rebalance) remembers what was sent below its committed offset
    write_requests(kafka_bootstrap, outbox, first[:10] + [("report", "r20", report("e20", "text 20"))])
    await run_coop_reports(settings, until_idle=2.0)
    assert sorted(coop.counts().values()) == [1] * 21 and coop.violations == []


async def test_a_request_coop_refuses_is_a_dead_letter_with_coops_answer(kafka_bootstrap, topics, coop,
                                                                         tmp_path: Path) -> None:
    names = topics(partitions=1)
    outbox = f"coop-rej-{tmp_path.name}"
    create_topics(kafka_bootstrap, {outbox: 1})
    settings = load_settings(None, {"kafka": {"bootstrap_servers": kafka_bootstrap, "group_id": f"g-{outbox}",
                                              "dead_letter_topic": names["dlq"]},
                                    "integrations": coop_config(coop, outbox), "metrics": {"port": 0}})
    coop.reject_text = "REFUSE-ME"
    items = [("item", f"e{i}", {"id": f"e{i}", "typeId": "content-type",
                                "data": {"text": "REFUSE-ME" if i == 3 else f"ok {i}"}}) for i in range(6)]
    write_requests(kafka_bootstrap, outbox, [("report", "r0", report("e0", "fine")),
                                             ("report", "r1", report("e1", "REFUSE-ME please")), *items,
                                             ("report", "r2", report("e2", "fine too"))])
    produce(kafka_bootstrap, outbox, [(b"report/x", b"not json at all")])
    await run_coop_reports(settings, until_idle=2.0)
    assert set(coop.counts()) == {"e0", "e2"}
    assert sorted(i["id"] for i in coop.items) == ["e0", "e1", "e2", "e4", "e5"]  # the batch split, one refused
    letters = [orjson.loads(m.value()) for m in read_to_end(kafka_bootstrap, names["dlq"])]
    by_type = Counter(letter["error_type"] for letter in letters)
    assert by_type == {"integration_rejected": 2, "schema_violation": 1}
    rejected = [letter for letter in letters if letter["error_type"] == "integration_rejected"]
    assert {letter["event_id"] for letter in rejected} == {"r1", "e3"}
    assert all("Coop answered 400" in r["error"] and "data-invalid-for-item-type" in r["error"] for r in rejected)
