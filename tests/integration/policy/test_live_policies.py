"""Policies change under a running consumer: from disk and from the compacted policies topic."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Producer

from streams.app import run_consumer
from streams.config import load_settings
from streams.devtools.broker import create_topics
from streams.engine.pipeline import Pipeline
from streams.policy.registry import PolicyRegistry
from tests.integration.helpers import ROOT, produce, read_all, safeguard, write_config


def events(start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), orjson.dumps({"event_id": f"e{i}", "text": f"message {i}"}))
            for i in range(start, start + n)]


async def labels_until(bootstrap: str, topic: str, n: int) -> list[dict]:
    msgs = await asyncio.to_thread(read_all, bootstrap, topic, expect=n, timeout_s=60)
    return [orjson.loads(m.value()) for m in msgs]


async def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class Running:
    """A consumer running in this event loop for the duration of a test."""

    def __init__(self, config: Path) -> None:
        self.holder: list[Pipeline] = []
        self.registry: list[PolicyRegistry] = []
        self.task = asyncio.create_task(run_consumer(load_settings(config), on_pipeline=self.holder.append,
                                                     on_policies=self.registry.append))

    async def started(self, *, with_partitions: bool = True) -> PolicyRegistry:
        """The consumer's live policies, once it runs (and owns partitions, unless told otherwise)."""
        await wait_for(lambda: bool(self.holder and (self.holder[0].assigned or not with_partitions)))
        return self.registry[0]

    async def stop(self) -> None:
        self.holder[0].stop()
        await self.task


def spam_text(version: int, extra: str = "") -> str:
    text = (ROOT / "policies/spam.md").read_text().replace("version: 1", f"version: {version}")
    return text.replace("bulk commercial content.", f"bulk commercial content.{extra}")


async def test_edit_on_disk_switches_version_without_restart(kafka_bootstrap, topics, sims, tmp_path) -> None:
    names = topics(partitions=2)
    pol_dir = tmp_path / "policies"
    pol_dir.mkdir()
    shutil.copy(ROOT / "policies/spam.md", pol_dir / "spam.md")
    urls = sims(1).urls
    config = write_config(tmp_path, kafka_bootstrap, names, urls,
                          policies={"dir": str(pol_dir), "default": ["spam"], "reload_interval_s": 0.2})
    run = Running(config)
    policies = await run.started()
    v1 = policies.policies["spam"].version

    produce(kafka_bootstrap, names["input"], events(0, 20))
    first = await labels_until(kafka_bootstrap, names["labels"], 20)
    (pol_dir / "spam.md").write_text(spam_text(2, " Chain letters count too."))
    await wait_for(lambda: policies.policies["spam"].version != v1)
    v2 = policies.policies["spam"].version
    produce(kafka_bootstrap, names["input"], events(20, 20))
    both = await labels_until(kafka_bootstrap, names["labels"], 40)
    await run.stop()

    assert {lab["policy_version"] for lab in first} == {v1}
    by_event = Counter(lab["event_id"] for lab in both)
    assert by_event == Counter({f"e{i}": 1 for i in range(40)})  # nothing lost, nothing twice
    assert {lab["policy_version"] for lab in both if int(lab["event_id"][1:]) >= 20} == {v2}
    assert v2.startswith("2-")


async def test_policies_topic_updates_every_consumer_and_rejects_invalid(
        kafka_bootstrap, topics, sims, tmp_path) -> None:
    names = topics(partitions=2)
    policies_topic = f"policies-{names['input']}"
    create_topics(kafka_bootstrap, {policies_topic: 1})
    urls = sims(1).urls
    config = write_config(tmp_path, kafka_bootstrap, names, urls,
                          kafka={"policies_topic": policies_topic, "bootstrap_servers": kafka_bootstrap,
                                 "group_id": f"g-{names['input']}", "input_topics": [names["input"]],
                                 "labels_topic": names["labels"], "dead_letter_topic": names["dlq"],
                                 "librdkafka": {"session.timeout.ms": 6000}},
                          policies={"dir": str(ROOT / "policies"), "default": ["spam"], "reload_interval_s": 0})
    run = Running(config)
    policies = await run.started()
    v1 = policies.policies["spam"].version
    produce(kafka_bootstrap, names["input"], events(0, 10))
    await labels_until(kafka_bootstrap, names["labels"], 10)

    new_file = tmp_path / "spam.md"
    new_file.write_text(spam_text(3, " Pyramid schemes count too."))
    proc = await asyncio.to_thread(safeguard, "policies", "publish", str(new_file), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    await wait_for(lambda: policies.policies["spam"].version.startswith("3-"))
    v3 = policies.policies["spam"].version
    produce(kafka_bootstrap, names["input"], events(10, 10))
    await labels_until(kafka_bootstrap, names["labels"], 20)

    # An invalid update (the CLI refuses it, so write it raw) is rejected; v3 keeps serving.
    broken = tmp_path / "broken.md"
    broken.write_text("no front matter here")
    refused = await asyncio.to_thread(safeguard, "policies", "publish", str(broken), "--config", str(config))
    assert refused.returncode == 2 and "lint" in refused.stderr
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(policies_topic, key=b"spam", value=b"no front matter here")
    p.flush(10)
    await wait_for(lambda: policies.rejected >= 1)
    produce(kafka_bootstrap, names["input"], events(20, 10))
    labels = await labels_until(kafka_bootstrap, names["labels"], 30)
    await run.stop()

    version_of = {lab["event_id"]: lab["policy_version"] for lab in labels}
    assert len(labels) == 30 and len(version_of) == 30
    assert {version_of[f"e{i}"] for i in range(10)} == {v1}
    assert {version_of[f"e{i}"] for i in range(10, 30)} == {v3}


async def test_topic_update_reaches_every_consumer_and_late_joiners(kafka_bootstrap, topics, sims, tmp_path) -> None:
    names = topics(partitions=2)
    policies_topic = f"policies-{names['input']}"
    create_topics(kafka_bootstrap, {policies_topic: 1})
    urls = sims(1).urls
    kafka = {"policies_topic": policies_topic, "bootstrap_servers": kafka_bootstrap, "group_id": f"g-{names['input']}",
             "input_topics": [names["input"]], "labels_topic": names["labels"], "dead_letter_topic": names["dlq"],
             "librdkafka": {"session.timeout.ms": 6000}}
    config = write_config(tmp_path, kafka_bootstrap, names, urls, kafka=kafka,
                          policies={"dir": str(ROOT / "policies"), "default": ["spam"], "reload_interval_s": 0})
    a, b = Running(config), Running(config)
    pa, pb = await a.started(), await b.started()
    new_file = tmp_path / "spam.md"
    new_file.write_text(spam_text(4))
    proc = await asyncio.to_thread(safeguard, "policies", "publish", str(new_file), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    await wait_for(lambda: all(p.policies["spam"].version.startswith("4-") for p in (pa, pb)), 10)
    late = Running(config)  # started after the update: catches up from the topic before consuming
    pc = await late.started(with_partitions=False)  # (two partitions, so it may get none)
    assert pc.policies["spam"].version == pa.policies["spam"].version
    for r in (a, b, late):
        await r.stop()


GHOST = "---\nid: ghost\nversion: 1\n---\n# Ghost (policy ghost)\n\nNot routed anywhere.\n"


async def test_catch_up_ends_at_a_transaction_marker_and_applies_tombstones(kafka_bootstrap, topics, sims, tmp_path,
                                                                            caplog) -> None:
    """The policies topic ends in a transaction marker (its last record is not at high watermark - 1),
    and holds a keyless record, a value that is not UTF-8, a policy and its tombstone."""
    import logging

    caplog.set_level(logging.INFO, logger="streams.policy")
    names = topics(partitions=2)
    policies_topic = f"policies-{names['input']}"
    create_topics(kafka_bootstrap, {policies_topic: 1})
    plain = Producer({"bootstrap.servers": kafka_bootstrap})
    plain.produce(policies_topic, value=spam_text(7))  # no key: ignored with a logged reason
    plain.produce(policies_topic, key=b"self-harm", value=b"\xff\xfe not utf-8")  # rejected, old version serves
    plain.produce(policies_topic, key=b"ghost", value=GHOST.encode())
    assert plain.flush(10) == 0
    txn = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": policies_topic})
    txn.init_transactions(10)
    txn.begin_transaction()
    txn.produce(policies_topic, key=b"spam", value=spam_text(5).encode())
    txn.produce(policies_topic, key=b"ghost", value=None)  # tombstone: deleted again
    txn.commit_transaction(10)  # the log now ends in the commit marker
    kafka = {"policies_topic": policies_topic, "bootstrap_servers": kafka_bootstrap, "group_id": f"g-{names['input']}",
             "input_topics": [names["input"]], "labels_topic": names["labels"], "dead_letter_topic": names["dlq"],
             "librdkafka": {"session.timeout.ms": 6000}}
    config = write_config(tmp_path, kafka_bootstrap, names, sims(1).urls, kafka=kafka,
                          policies={"dir": str(ROOT / "policies"), "default": ["spam"], "reload_interval_s": 0})
    starter = {p.stem: p for p in (ROOT / "policies").glob("*.md")}
    run = Running(config)
    policies = await run.started()
    assert policies.policies["spam"].version.startswith("5-") and "ghost" not in policies.policies
    assert policies.policies["self-harm"].body.strip() in starter["self-harm"].read_text()
    assert "policy record without key ignored" in caplog.text and "not UTF-8" in caplog.text

    extra = tmp_path / "ghost.md"
    extra.write_text(spam_text(1).replace("id: spam", "id: ghost"))  # lint-clean, as publish requires
    published = await asyncio.to_thread(safeguard, "policies", "publish", str(extra), "--config", str(config))
    assert published.returncode == 0, published.stderr
    await wait_for(lambda: "ghost" in policies.policies)
    deleted = await asyncio.to_thread(safeguard, "policies", "publish", "--delete", "ghost", "--config", str(config))
    assert deleted.returncode == 0 and "ghost (deleted)" in deleted.stdout, deleted.stderr
    await wait_for(lambda: "ghost" not in policies.policies)
    await run.stop()
