"""Integration fixtures: a real Kafka-protocol broker (session-scoped) and real HTTP simulators.

Broker order (docs/development.md): ``KAFKA_BOOTSTRAP_SERVERS`` set -> that broker; else a
reachable Docker engine -> testcontainers Kafka; else Java and Maven (or the cached jars) -> Apache
Kafka from Maven Central (:mod:`streams.devtools.apache_kafka`); else the embedded Tansu broker,
with a warning saying what it does not cover. ``STREAMS_TEST_BROKER=kafka|tansu`` forces the
launcher or Tansu (CI runs the demo's subset on Tansu too; not a ``SAFEGUARD_`` name: those are
configuration overrides, and the consumer would refuse an unknown section). Never skipped.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.devtools.broker import EmbeddedBroker, LocalBroker, create_topics
from streams.devtools.sim.launcher import SimProcesses
from tests.integration.helpers import ConsumerProcess

ROOT = Path(__file__).resolve().parents[2]
TANSU_GAPS = ("the embedded Tansu broker shows aborted transactional records to read_committed readers, "
              "so exactly-once is checked only for loss, not for duplicates; run with Java 17 and Maven "
              "(the Apache Kafka launcher) or KAFKA_BOOTSTRAP_SERVERS for the strict checks")
_local: list[LocalBroker] = []  # this worker's broker, for the failure reports


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False


def choose_broker() -> str:
    """``external``, ``container``, ``kafka`` (the launcher) or ``tansu``, in DESIGN section 10's order."""
    forced = os.environ.get("STREAMS_TEST_BROKER", "")
    if forced in ("kafka", "tansu"):
        return forced
    if forced:
        raise pytest.UsageError(f"STREAMS_TEST_BROKER={forced!r}: use kafka or tansu")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    if _docker_reachable():
        return "container"
    from streams.devtools.kafka_jars import available

    return "kafka" if available() else "tansu"


def describe_broker(kind: str) -> str:
    from streams.devtools.kafka_jars import KAFKA_VERSION

    return {"external": f"KAFKA_BOOTSTRAP_SERVERS={os.environ.get('KAFKA_BOOTSTRAP_SERVERS')}",
            "container": "Kafka in a testcontainer (Docker)",
            "kafka": f"Apache Kafka {KAFKA_VERSION} (KRaft, one node per worker, from Maven Central jars)",
            "tansu": f"embedded Tansu: {TANSU_GAPS}"}[kind]


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """Which broker the run uses: ``external`` (KAFKA_BOOTSTRAP_SERVERS), ``container`` (a
    testcontainers Kafka), ``kafka`` (the Apache Kafka launcher) or ``tansu`` (the embedded broker)."""
    kind = choose_broker()
    if kind == "tansu":
        warnings.warn(TANSU_GAPS, stacklevel=1)
    return kind


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind: str) -> Iterator[str]:
    if broker_kind == "external":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if broker_kind == "container":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker: LocalBroker
    if broker_kind == "kafka":
        from streams.devtools.apache_kafka import KafkaBroker

        broker = KafkaBroker()
    else:
        broker = EmbeddedBroker()
    broker.start()
    _local.append(broker)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed integration test shows where the broker's log is, and its last lines."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _local:
        broker = _local[-1]
        try:
            tail = "\n".join(broker.log_path.read_text(errors="replace").splitlines()[-25:])
        except OSError:
            tail = "(unreadable)"
        report.sections.append((f"broker log ({broker.kind} {broker.version})", f"{broker.log_path}\n{tail}"))


@pytest.fixture
def topics(kafka_bootstrap: str) -> Callable[..., dict[str, str]]:
    """Factory: unique input/labels/dlq/reasoning topics for one test."""

    def make(partitions: int = 3, *, input_config: dict[str, str] | None = None) -> dict[str, str]:
        """``input_config``: the input topic's settings (e.g. ``max.message.bytes`` above Kafka's 1 MB
        default, for events bigger than the consumer accepts)."""
        tag = uuid.uuid4().hex[:10]
        names = {"input": f"in-{tag}", "labels": f"labels-{tag}", "dlq": f"dlq-{tag}", "reasoning": f"cot-{tag}"}
        create_topics(kafka_bootstrap, {names["input"]: partitions, names["labels"]: partitions,
                                        names["dlq"]: 1, names["reasoning"]: 1},
                      config={names["input"]: input_config or {}})
        return names

    return make


@pytest.fixture
def answer_key(tmp_path: Path) -> Callable[[list[dict[str, Any]]], Path]:
    def write(rows: list[dict[str, Any]]) -> Path:
        path = tmp_path / f"key-{uuid.uuid4().hex[:6]}.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
        return path

    return write


@pytest.fixture
def sims() -> Iterator[Callable[..., SimProcesses]]:
    """Factory: start simulated replicas (subprocesses); all stopped at teardown."""
    started: list[SimProcesses] = []

    def start(count: int = 1, **kwargs: Any) -> SimProcesses:
        kwargs.setdefault("time_scale", 50.0)
        sp = SimProcesses(count, **kwargs).__enter__()
        started.append(sp)
        return sp

    yield start
    for sp in started:
        sp.__exit__(None, None, None)


@pytest.fixture
def consumers(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Factory: ``safeguard run`` subprocesses, killed at teardown whatever happened."""
    started: list[ConsumerProcess] = []

    def start(config: Path, command: str = "run", *args: str) -> ConsumerProcess:
        c = ConsumerProcess(config, tmp_path / f"{command}-{len(started)}.log", command, *args).start()
        started.append(c)
        return c

    yield start
    for c in started:
        if c.alive():
            c.kill()


@pytest.fixture(scope="session")
def broker_hides_aborted(kafka_bootstrap: str) -> bool:
    """Measured, not assumed: does a read_committed reader on this broker skip aborted records?

    Apache Kafka does. The embedded Tansu 0.6.0 broker does not (it returns no aborted-transaction
    list, so librdkafka cannot filter), which means strict exactly-once after a crash cannot be
    observed on it; tests then assert what still holds (no event lost) and say why.
    """
    import time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    topic = f"probe-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 1})
    p = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": topic})
    p.init_transactions(10)
    p.begin_transaction()
    p.produce(topic, b"aborted")
    p.flush(10)
    p.abort_transaction(10)
    p.begin_transaction()
    p.produce(topic, b"committed")
    p.commit_transaction(10)
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic, "isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 10
    while b"committed" not in seen and time.monotonic() < deadline:
        seen += [m.value() for m in c.consume(10, 0.2) if m.error() is None]
    c.close()
    assert b"committed" in seen, "committed transactional data must be visible"
    return b"aborted" not in seen
