"""The poll loop without a broker or replicas: the production wiring, fakes at the Kafka and HTTP edges."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from streams.app import build_pipeline
from streams.config import OutputSettings, SchemaRegistrySettings, Settings, load_settings
from streams.engine.delivery import AtLeastOnce, Delivery, ExactlyOnce, Ledger
from streams.errors import FatalError, RetryableError
from streams.ops.metrics import build_metrics
from streams.policy.model import STARTER_POLICIES, load_policies
from streams.policy.registry import PolicyRegistry
from streams.wire.codec import Encoder
from tests.unit.engine.fakes import FakeClient, FakeKafkaConsumer, FakeMessage, FakePool, output_producer

VIOLATING = '{"violation": 1, "policy_category": "SP2", "rule_ids": ["SP2"], "confidence": "high", "rationale": "bulk"}'
SAFE = '{"violation": 0, "policy_category": null, "rule_ids": [], "confidence": "high", "rationale": "fine"}'


def answer(content: str) -> str:
    return VIOLATING if "buy now" in content else SAFE


def settings(**extra: Any) -> Settings:
    return load_settings(None, {"kafka": {"input_topics": ["in"]}, "policies": {"dir": str(STARTER_POLICIES),
                                "default": ["spam"], "reload_interval_s": 0}, "metrics": {"port": 0}, **extra})


def event(event_id: str, text: str, **fields: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "text": text, **fields})


async def run(s: Settings, messages: list[FakeMessage], delivery: Delivery, pool: FakePool,
              partitions: list[tuple[str, int]], *, encoder: Any = None, registry: Any = None,
              started: Any = None, settled: bool = True, metrics: Any = None) -> FakeKafkaConsumer:
    consumer = FakeKafkaConsumer(messages, partitions)
    registry = registry or PolicyRegistry(load_policies(s.policies.dir), s.policies.routes, s.policies.default)
    pipeline = build_pipeline(s, registry, pool, metrics or build_metrics(), delivery=delivery,  # type: ignore[arg-type]
                              encoder=encoder, consumer_factory=lambda conf: consumer)
    if started is not None:
        started(pipeline)
    await pipeline.run(until_idle=0.3)
    assert consumer.closed and (pipeline.inflight_events == 0 or not settled)
    return consumer


def outputs(client: FakeClient, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in client.produced if r.topic == topic]


async def test_a_batch_goes_through_every_stage_and_is_committed_to_its_end() -> None:
    s = settings()
    client, pool = FakeClient(), FakePool(answer)
    messages = [FakeMessage("in", 0, 0, event("e0", "buy now, cheap pills")),
                FakeMessage("in", 0, 1, b"{not json"),
                FakeMessage("in", 1, 0, event("e1", "hello there")),
                FakeMessage("in", 1, 1, event("e2", "Buy  NOW, cheap pills")),  # a variant: the same decision
                FakeMessage("in", 1, 2, event("e3", "hi", policies=["ghost"])),
                FakeMessage("in", 0, 2, event("e4", "a chat", kind="chat",
                                              messages=[{"role": "user", "content": "buy now please"}]))]
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    consumer = await run(s, messages, delivery, pool, [("in", 0), ("in", 1)])

    labels = {lab["event_id"]: lab for lab in outputs(client, s.kafka.labels_topic)}
    assert {k: (v["violation"], v["decided_by"]) for k, v in labels.items()} == {
        "e0": (True, "model"), "e1": (False, "model"), "e2": (True, "cache"), "e4": (True, "model")}
    assert labels["e0"]["source"] == {"topic": "in", "partition": 0, "offset": 0}
    assert labels["e2"]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert pool.requests[-1]["messages"][1]["content"].splitlines()[1:] == [  # the chat as a transcript
        '{"role": "user", "content": "buy now please"}']
    letters = {(d["source"]["partition"], d["source"]["offset"]): d["error_type"]
               for d in outputs(client, s.kafka.dead_letter_topic)}
    assert letters == {(0, 1): "invalid_json", (1, 2): "unknown_policy"}
    assert len(pool.requests) == 3  # e0, e1, e4: the duplicate never reached a replica
    assert consumer.committed_at == {("in", 0): 3, ("in", 1): 3}


async def test_combined_mode_sends_one_request_for_the_acting_policies() -> None:
    s = settings(policies={"dir": str(STARTER_POLICIES), "default": ["spam", "game-cheating"],
                           "reload_interval_s": 0, "mode": "combined"})
    client = FakeClient()

    def combined(content: str) -> str:
        return orjson.dumps({"spam": orjson.loads(answer(content)), "game-cheating": orjson.loads(SAFE)}).decode()

    pool = FakePool(combined)
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    await run(s, [FakeMessage("in", 0, 0, event("e0", "buy now"))], delivery, pool, [("in", 0)])
    labels = {lab["policy_id"]: lab for lab in outputs(client, s.kafka.labels_topic)}
    assert len(pool.requests) == 1 and set(labels) == {"spam", "game-cheating"}
    assert labels["spam"]["violation"] is True and labels["game-cheating"]["violation"] is False
    assert sum(lab["usage"]["prompt_tokens"] for lab in labels.values()) == 100  # the request's cost, split


async def test_exactly_once_through_the_loop_commits_offsets_in_the_transaction() -> None:
    s = settings(delivery="exactly_once")
    client, pool = FakeClient(), FakePool(answer)
    delivery = ExactlyOnce(Ledger(), output_producer(client), commit_interval_s=0.0, auto_offset_reset="earliest")
    messages = [FakeMessage("in", 0, i, event(f"e{i}", f"message {i}")) for i in range(5)]
    consumer = await run(s, messages, delivery, pool, [("in", 0)])
    assert [orjson.loads(r.value)["event_id"] for r in client.produced] == ["e0", "e1", "e2", "e3", "e4"]
    assert client.offsets_sent and client.offsets_sent[-1] == [("in", 0, 5)]
    assert consumer.commits == []
    assert client.calls[-3:] == ["commit", "begin", "abort"]  # shutdown aborts the empty transaction left open


async def test_a_producer_that_cannot_start_transactions_stops_the_consumer_before_it_joins() -> None:
    s = settings(delivery="exactly_once")
    client = FakeClient(fail_next={"init": KafkaError(KafkaError._FENCED, "fenced")})
    delivery = ExactlyOnce(Ledger(), output_producer(client), commit_interval_s=0.0, auto_offset_reset="earliest")
    consumer = FakeKafkaConsumer([FakeMessage("in", 0, 0, event("e0", "hi"))], [("in", 0)])
    registry = PolicyRegistry(load_policies(s.policies.dir), s.policies.routes, s.policies.default)
    pipeline = build_pipeline(s, registry, FakePool(answer), build_metrics(), delivery=delivery,  # type: ignore[arg-type]
                              consumer_factory=lambda conf: consumer)
    with pytest.raises(FatalError, match="cannot start transactions"):
        await pipeline.run(until_idle=0.3)
    assert consumer.closed and pipeline.consumed == 0 and not pipeline.assigned
    assert client.produced == []


class Encoding(Encoder):
    """The JSON encoder, failing as ``fail(doc, schema)`` says (an exception to raise, or None)."""

    def __init__(self, fail: Any) -> None:
        super().__init__(OutputSettings(), SchemaRegistrySettings())
        self._fail = fail

    def encode(self, model: Any, schema: str, topic: str) -> bytes:
        exc = self._fail(model, schema)
        if exc is not None:
            raise exc
        return super().encode(model, schema, topic)


async def test_an_event_whose_outputs_cannot_be_built_is_dead_lettered_and_the_partition_goes_on() -> None:
    s = settings()
    client, pool = FakeClient(), FakePool(answer)

    def fail(doc: Any, schema: str) -> Exception | None:
        if schema == "label" and doc["event_id"] == "e1":
            return ValueError("a value the label schema cannot hold")
        return None

    messages = [FakeMessage("in", 0, i, event(f"e{i}", f"message {i}")) for i in range(3)]
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    consumer = await run(s, messages, delivery, pool, [("in", 0)], encoder=Encoding(fail))
    assert sorted(lab["event_id"] for lab in outputs(client, s.kafka.labels_topic)) == ["e0", "e2"]
    [letter] = outputs(client, s.kafka.dead_letter_topic)
    assert letter["error_type"] == "internal_error" and letter["event_id"] == "e1"
    assert "cannot build outputs: ValueError" in letter["error"]
    assert consumer.committed_at == {("in", 0): 3}


async def test_a_bug_in_a_stage_dead_letters_that_event_alone() -> None:
    s = settings()
    client, pool = FakeClient(), FakePool(answer)

    class Buggy(PolicyRegistry):
        def resolve(self, *, topic: str, kind: str, requested: Any) -> Any:
            if requested == ["boom"]:
                raise KeyError("a bug met by this event only")
            return super().resolve(topic=topic, kind=kind, requested=requested)

    registry = Buggy(load_policies(s.policies.dir), s.policies.routes, s.policies.default)
    messages = [FakeMessage("in", 0, 0, event("e0", "hi")),
                FakeMessage("in", 0, 1, event("e1", "x", policies=["boom"])),
                FakeMessage("in", 0, 2, event("e2", "hello"))]
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    consumer = await run(s, messages, delivery, pool, [("in", 0)], registry=registry)
    assert sorted(lab["event_id"] for lab in outputs(client, s.kafka.labels_topic)) == ["e0", "e2"]
    assert [d["error_type"] for d in outputs(client, s.kafka.dead_letter_topic)] == ["internal_error"]
    assert consumer.committed_at == {("in", 0): 3}


async def test_a_registry_outage_holds_events_pauses_and_resumes_without_losing_any() -> None:
    s = settings()
    client, pool = FakeClient(), FakePool(answer)
    down = {"left": 4}
    seen_ready: list[bool] = []
    holder: list[Any] = []

    def fail(doc: Any, schema: str) -> Exception | None:
        if down["left"] > 0:
            down["left"] -= 1
            if holder:
                seen_ready.append(holder[0].ready)
            return RetryableError("schema registry unreachable at http://registry:8081: connection refused")
        return None

    messages = [FakeMessage("in", 0, i, event(f"e{i}", f"message {i}")) for i in range(5)]
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    consumer = await run(s, messages, delivery, pool, [("in", 0)], encoder=Encoding(fail), started=holder.append)
    assert sorted(lab["event_id"] for lab in outputs(client, s.kafka.labels_topic)) == [f"e{i}" for i in range(5)]
    assert outputs(client, s.kafka.dead_letter_topic) == []  # an outage is never the events' fault
    assert consumer.pauses >= 1 and not consumer.paused  # paused while they waited, resumed after
    assert False in seen_ready[1:] and holder[0].ready  # not ready while events waited
    assert consumer.committed_at == {("in", 0): 5}


async def test_sigterm_while_events_wait_for_an_outage_stops_within_the_drain_bound(caplog: Any) -> None:
    s = settings(batching={"drain_timeout_s": 0.5})
    client, pool = FakeClient(), FakePool(answer)
    holder: list[Any] = []

    def fail(doc: Any, schema: str) -> Exception | None:
        if holder:
            holder[0].stop()  # SIGTERM arrives while the registry is down
        return RetryableError("schema registry unreachable at http://registry:8081: connection refused")

    messages = [FakeMessage("in", 0, i, event(f"e{i}", f"message {i}")) for i in range(3)]
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    consumer = await run(s, messages, delivery, pool, [("in", 0)], encoder=Encoding(fail), started=holder.append,
                         settled=False)
    assert "drain bound reached with 3 events unsettled" in caplog.text
    assert client.produced == [] and consumer.committed_at == {}  # nothing written, nothing committed


async def test_a_label_the_broker_never_acknowledges_stops_the_consumer_without_committing_past_it() -> None:
    s = settings()
    client, pool = FakeClient(auto_ack=False), FakePool(answer)
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    consumer = FakeKafkaConsumer([FakeMessage("in", 0, i, event(f"e{i}", f"m {i}")) for i in range(3)], [("in", 0)])
    registry = PolicyRegistry(load_policies(s.policies.dir), s.policies.routes, s.policies.default)
    pipeline = build_pipeline(s, registry, pool, build_metrics(), delivery=delivery,  # type: ignore[arg-type]
                              consumer_factory=lambda conf: consumer)
    task = asyncio.create_task(pipeline.run(until_idle=30))
    while len(client.produced) < 3:
        await asyncio.sleep(0.01)
    client.report(1)
    client.report(2)
    client.report(0, KafkaError(KafkaError._MSG_TIMED_OUT, "Message timed out"))
    with pytest.raises(FatalError, match="pipeline stopped: .*timed out"):
        await asyncio.wait_for(task, 30)
    assert consumer.commits == [] and consumer.closed  # 1 and 2 are acknowledged, but 0 holds them


async def test_the_lag_of_a_partition_that_left_is_not_reported_any_more() -> None:
    s = settings()
    metrics = build_metrics()
    metrics.consumer_lag.labels("in", "0").set(42)  # as the statistics callback set it
    delivery = AtLeastOnce(Ledger(), output_producer(FakeClient()), commit_interval_s=0.0)
    await run(s, [FakeMessage("in", 0, 0, event("e0", "hi"))], delivery, FakePool(answer), [("in", 0)],
              metrics=metrics)
    assert metrics.registry.get_sample_value("safeguard_consumer_lag", {"topic": "in", "partition": "0"}) is None


async def test_a_revoke_the_loop_cannot_finish_in_time_is_logged_and_the_rebalance_goes_on(caplog: Any) -> None:
    """A rebalance callback waits for the loop's part of a revoke at most ``callback_bound_s``: a loop
    held up longer (a commit waiting on the very rebalance that waits on the callback) is a logged
    error, and the consumer carries on instead of dying of the timeout raised inside consume()."""
    import time

    class StuckRevoke(AtLeastOnce):
        def revoke(self, keys: Any) -> None:
            time.sleep(0.5)  # the loop blocked, as by a synchronous call into the broker
            super().revoke(keys)

    def bound(pipeline: Any) -> None:
        pipeline.callback_bound_s = 0.1

    s = settings()
    client = FakeClient()
    delivery = StuckRevoke(Ledger(), output_producer(client), commit_interval_s=0.0)
    await run(s, [FakeMessage("in", 0, 0, event("e0", "hi"))], delivery, FakePool(answer), [("in", 0)],
              started=bound)
    assert "revoke of in[0] did not finish within 0.1 s" in caplog.text
    assert [lab["event_id"] for lab in outputs(client, s.kafka.labels_topic)] == ["e0"]


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
async def test_a_revoke_commits_inside_the_rebalance_callback(mode: str, caplog: Any) -> None:
    """confluent-kafka lets one thread into a consumer at a time, and the thread in ``consume()`` waits
    in the revoke callback for the loop: the revoke's consumer calls (the commit, the group metadata of
    the transaction) must run inside that callback, not wait for it to end. A cooperative rebalance
    takes partition 1 once both events are labelled; nothing was committed before (the interval is an
    hour), so the revoke is what commits partition 1."""
    s = settings(delivery=mode)
    client = FakeClient()
    producer = output_producer(client)
    delivery: Delivery = (AtLeastOnce(Ledger(), producer, commit_interval_s=3600.0) if mode == "at_least_once" else
                          ExactlyOnce(Ledger(), producer, commit_interval_s=3600.0, auto_offset_reset="earliest"))

    def rebalance(consumer: FakeKafkaConsumer) -> None:
        labels = [r for r in client.produced if r.topic == s.kafka.labels_topic]
        if sum(r.reported or mode == "exactly_once" for r in labels) == 2 and ("in", 1) in consumer.assigned:
            consumer.revoke([("in", 1)])

    messages = [FakeMessage("in", 0, 0, event("e0", "hi")), FakeMessage("in", 1, 0, event("e1", "yo"))]
    consumer = FakeKafkaConsumer(messages, [("in", 0), ("in", 1)], before_consume=rebalance)
    registry = PolicyRegistry(load_policies(s.policies.dir), s.policies.routes, s.policies.default)
    pipeline = build_pipeline(s, registry, FakePool(answer), build_metrics(), delivery=delivery,  # type: ignore[arg-type]
                              consumer_factory=lambda conf: consumer)
    pipeline.callback_bound_s = 2.0
    await pipeline.run(until_idle=0.3)
    assert "did not finish" not in caplog.text
    assert consumer.assigned == [] and consumer.closed
    if mode == "at_least_once":
        assert "commit" in consumer.in_callback_calls
        assert consumer.commits[0] == ({("in", 1): 1}, False)  # synchronous, the revoked partition only
    else:
        assert "consumer_group_metadata" in consumer.in_callback_calls
        assert ("in", 1, 1) in client.offsets_sent[0]


async def test_until_idle_counts_from_the_latest_assignment_not_the_first() -> None:
    """A member idle on an empty partition is given another (a rebalance) whose records take a while
    to arrive: ``--until-idle`` must not end the run on the idle time it had before, leaving them."""
    import time

    s = settings()
    client = FakeClient()
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    start = time.monotonic()

    def rebalance(consumer: FakeKafkaConsumer) -> None:
        now = time.monotonic() - start
        if now >= 0.6 and ("in", 0) in consumer.assigned:  # idle for 0.6 s of the 1.0 s: another partition
            consumer.revoke([("in", 0)])
            consumer._partitions = [("in", 1)]  # assigned at the same consume, as the group would
        if now >= 1.3 and not consumer._queue and not client.produced:  # its first record, fetched late
            consumer._queue.append(FakeMessage("in", 1, 0, event("e1", "buy now, cheap pills")))

    consumer = FakeKafkaConsumer([], [("in", 0)], before_consume=rebalance)
    registry = PolicyRegistry(load_policies(s.policies.dir), s.policies.routes, s.policies.default)
    pipeline = build_pipeline(s, registry, FakePool(answer), build_metrics(), delivery=delivery,  # type: ignore[arg-type]
                              consumer_factory=lambda conf: consumer)
    await pipeline.run(until_idle=1.0)
    assert [r["event_id"] for r in outputs(client, s.kafka.labels_topic)] == ["e1"]


async def test_until_idle_does_not_count_the_time_before_partitions_were_lost() -> None:
    """A member fenced by the group (session timeout) drops what it had in flight; the records come back
    once it rejoins. Seen on the real engine under load: the idle time before the loss counted, and
    ``--until-idle`` exited at the loss with the stream unlabelled."""
    import time

    s = settings()
    client = FakeClient()
    delivery = AtLeastOnce(Ledger(), output_producer(client), commit_interval_s=0.0)
    record = FakeMessage("in", 0, 0, event("e1", "buy now, cheap pills"))
    start = time.monotonic()
    phase = ["labelling"]

    def fenced(consumer: FakeKafkaConsumer) -> None:
        now = time.monotonic() - start
        if phase[0] == "labelling" and now >= 1.2:  # the answer is still on its way (1.5 s)
            consumer.lose()
            phase[0] = "rejoining"
        elif phase[0] == "rejoining" and now >= 1.7:  # the group gives the partition back; re-read
            consumer._partitions = [("in", 0)]
            consumer._queue.append(record)
            phase[0] = "rejoined"

    class SlowPool(FakePool):
        async def chat(self, body: dict[str, Any], lane: Any = None) -> Any:
            await asyncio.sleep(1.5)
            return await super().chat(body)

    consumer = FakeKafkaConsumer([record], [("in", 0)], before_consume=fenced)
    registry = PolicyRegistry(load_policies(s.policies.dir), s.policies.routes, s.policies.default)
    pipeline = build_pipeline(s, registry, SlowPool(answer), build_metrics(), delivery=delivery,  # type: ignore[arg-type]
                              consumer_factory=lambda conf: consumer)
    await pipeline.run(until_idle=1.0)
    assert phase[0] == "rejoined"
    assert [r["event_id"] for r in outputs(client, s.kafka.labels_topic)] == ["e1"]
