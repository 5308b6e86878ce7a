"""The Apache Kafka launcher (streams/devtools/apache_kafka.py): a real KRaft node
from Maven Central jars that serves, keeps transactions honest, stops cleanly, and starts again from
its cache without Maven (so without the network)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.devtools.apache_kafka import KafkaBroker
from streams.devtools.broker import create_topics
from streams.devtools.kafka_jars import KAFKA_VERSION, LOG4J_VERSION, gather
from streams.errors import FatalError
from tests.integration.helpers import ROOT


def _read(bootstrap: str, topic: str, isolation: str, until: bytes) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                  "isolation.level": isolation, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 20
    while until not in seen and time.monotonic() < deadline:
        seen += [m.value() for m in c.consume(10, 0.2) if m.error() is None]
    c.close()
    return seen


def test_launcher_serves_hides_aborted_transactions_and_stops_cleanly() -> None:
    broker = KafkaBroker().start()
    try:
        assert broker.running and broker.started_in_s is not None
        topic = f"t-{uuid.uuid4().hex[:8]}"
        create_topics(broker.bootstrap, {topic: 1})
        p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": topic})
        p.init_transactions(30)
        p.begin_transaction()
        p.produce(topic, b"aborted")
        p.flush(10)
        p.abort_transaction(10)
        p.begin_transaction()
        p.produce(topic, b"committed")
        p.commit_transaction(10)
        # Both readers see the committed record; only read_uncommitted sees the aborted one (so the
        # read_committed assertion below can fail: the aborted record is really in the log).
        assert b"aborted" in _read(broker.bootstrap, topic, "read_uncommitted", b"committed")
        assert _read(broker.bootstrap, topic, "read_committed", b"committed") == [b"committed"]
    finally:
        proc = broker._proc
        broker.stop()
    assert proc is not None and proc.returncode == 128 + signal.SIGTERM, "stopped by SIGTERM, not killed"
    assert not broker.running
    log = broker.log_path.read_text()
    assert "Kafka Server started" in log
    assert "shut down completed" in log, f"no clean shutdown in {broker.log_path}:\n{log[-2000:]}"


def _only_java_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has java and nothing else: no mvn, so nothing can be downloaded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = shutil.which("java")
    assert java is not None, "the launcher's tests need java on PATH"
    (bin_dir / "java").symlink_to(os.path.realpath(java))
    return os.environ | {"PATH": str(bin_dir)}


def test_safeguard_broker_starts_again_from_the_cache_without_maven(tmp_path: Path) -> None:
    gather()  # the cache is filled (by the session's broker on this machine, or now)
    env = _only_java_on_path(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "streams", "broker", "--kind", "kafka", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the contract: one JSON line once it serves
        assert line, f"no line on stdout; stderr:\n{proc.stderr.read().decode() if proc.stderr else ''}"
        doc = orjson.loads(line)
        assert doc["kind"] == "kafka" and doc["version"] == KAFKA_VERSION
        assert doc["bootstrap"].startswith("127.0.0.1:")
        meta = AdminClient({"bootstrap.servers": doc["bootstrap"]}).list_topics(timeout=10)
        assert meta.brokers, "the broker answers metadata requests"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "streams", "broker", "--kind", "kafka"], capture_output=True,
                       text=True, env=os.environ | {"PATH": str(empty)}, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, r.stderr
    assert "needs java" in errors[0] and "install Java 17" in errors[0], errors[0]
    assert "Traceback" not in r.stderr


def test_gather_into_a_fresh_cache_brings_the_logging_binding(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_CACHE_DIR", str(tmp_path / "cache"))
    libs = gather()
    jars = {p.name for p in libs.glob("*.jar")}
    assert f"kafka_2.13-{KAFKA_VERSION}.jar" in jars
    # without the SLF4J 1.x binding the broker logs nothing (slf4j-api falls back to NOP)
    assert f"log4j-slf4j-impl-{LOG4J_VERSION}.jar" in jars and "slf4j-api-1.7.36.jar" in jars
    assert f"log4j-core-{LOG4J_VERSION}.jar" in jars, "one log4j version throughout"
    assert gather() == libs  # the second call uses the cache
    with pytest.raises(FatalError, match="Maven could not gather Apache Kafka 0.0.1-no-such"):
        gather("0.0.1-no-such")


def test_demo_on_apache_kafka() -> None:
    """``safeguard demo --broker kafka``: the same demo on the launcher's broker (labels, decisions,
    escalations; exit 0 only when every event got its labels)."""
    r = subprocess.run([sys.executable, "-m", "streams", "demo", "--broker", "kafka", "--events", "120", "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert summary["broker"] == f"kafka {KAFKA_VERSION}"
    assert summary["events"] == 120 and summary["labels"] >= 120 and summary["dead_letters"] == 0
    assert summary["two_speed"]["provisional"] == 120


def test_safeguard_broker_embedded_kind() -> None:
    """The same contract for the embedded broker: one JSON line once it serves, exit 0 on SIGINT."""
    proc = subprocess.Popen([sys.executable, "-m", "streams", "broker", "--kind", "embedded", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        doc = orjson.loads(proc.stdout.readline())
        assert doc["kind"] == "embedded" and doc["version"].startswith("tansu")
        assert AdminClient({"bootstrap.servers": doc["bootstrap"]}).list_topics(timeout=10).brokers
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
