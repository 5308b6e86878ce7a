"""Apache Kafka from Maven Central: a real single-node KRaft broker for the tests, the bench, the demo
(``--broker kafka``) and ``safeguard broker`` (docs/development.md).

No tarball, no Docker. The first start on a machine gathers the broker's jars with Maven into a cache
outside the repository (``$SAFEGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/safeguard-streams``, else
``~/.cache/safeguard-streams``) and formats a KRaft storage template there; every later start copies
the template and launches one JVM, offline. One combined broker+controller on free loopback ports,
with the settings one node needs (the transaction log's replication factor and min ISR at 1).

What was checked on this machine, against the research notes in the shared reference (the notes
were right unless said here): ``kafka_2.13`` 4.4.0 brings log4j 2.25.5 and slf4j-api 1.7.36 but not
the SLF4J binding, so ``log4j-slf4j-impl`` of the same version is added (without it the broker logs
nothing); the formatted storage of a static-voter node names no port, so one template serves every
port; the broker is ready in 3-4 s on two cores with about 180 MB resident.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.devtools.cache import free_ports, locked
from streams.devtools.kafka_jars import INSTALL_HINT, KAFKA_VERSION, complete, gather, home, missing_tools
from streams.devtools.processes import dies_with_parent
from streams.errors import FatalError
from streams.kafka.logs import LIBRDKAFKA_LOG

log = logging.getLogger(__name__)

CLUSTER_ID = "MkU3OEVBNTcwNTJENDM2Qk"  # any 22-character base64url UUID not starting with '-'
# Quiet (about 25 lines per life), but keeps the broker's start and shutdown transitions; log4j's own
# shutdown hook is off, or it stops logging before Kafka's hook has shut the broker down.
_LOG4J2 = """status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
"""

# One node: every internal topic at replication factor 1 (the transaction log's min ISR defaults to
# 2, which would refuse every transactional write), one partition each (the coordinators load at
# once), no initial rebalance delay (a group forms as soon as its members join, as in testcontainers).
NODE_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "true",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    # The cleaner's dedupe buffer is on the heap (128 MiB by default: a quarter of ours).
    "log.cleaner.dedupe.buffer.size": "16777216",
    "log.cleaner.backoff.ms": "1000",
    # The one broker is fenced by its own controller when its heartbeats stall for the session
    # (9 s by default): every partition then loses its leader (NOT_LEADER_FOR_PARTITION, topic
    # creation timing out). Seen once, with controller events taking 3.8 s while two vLLM engines,
    # a CI run and a crash-test loop shared the two cores. With no other broker to fail over to, a
    # fence only takes the cluster away: a minute of stall is tolerated instead.
    "broker.session.timeout.ms": "60000",
}
JVM_OPTIONS = ["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]


def _properties(settings: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in settings.items())


def _template(version: str, libs: Path, java: str) -> Path:
    """A formatted KRaft storage directory (``kafka-storage format``), made once and copied per start:
    a static-voter node's formatted storage names no port, so one template serves every port."""
    root = home(version)
    template = root / "storage-template"
    if (template / "meta.properties").is_file():
        return template
    with locked(root.with_suffix(".lock")):
        if (template / "meta.properties").is_file():
            return template
        work = Path(tempfile.mkdtemp(prefix="kafka-format-", dir=root))
        try:
            storage = work / "storage"
            config = work / "server.properties"
            config.write_text(_properties(NODE_SETTINGS | {
                "controller.quorum.voters": "1@127.0.0.1:9093", "log.dirs": str(storage),
                "listeners": "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"}))
            (work / "log4j2.properties").write_text(_LOG4J2)
            cmd = [java, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                   f"-Dlog4j2.configurationFile={work / 'log4j2.properties'}", "-cp", f"{libs}/*",
                   "kafka.tools.StorageTool", "format", f"--cluster-id={CLUSTER_ID}", "-c", str(config)]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if result.returncode != 0 or not (storage / "meta.properties").is_file():
                raise FatalError(f"formatting KRaft storage failed (exit {result.returncode}):\n"
                                 f"{(result.stdout + result.stderr).strip()[-2000:]}")
            storage.rename(template)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return template


class KafkaBroker:
    """One Apache Kafka KRaft node (broker and controller) in a JVM subprocess. A context manager.

    ``log_path`` stays after :meth:`stop` so a failing test can print it; the storage directory goes.
    ``settings`` add or override broker settings (``server.properties`` keys)."""

    kind = "kafka"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, version: str = KAFKA_VERSION,
                 settings: dict[str, str] | None = None, jvm_options: list[str] | None = None) -> None:
        self.host = host
        self.port = port
        self.version = version
        self._settings = settings or {}
        self._jvm = jvm_options or JVM_OPTIONS
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="kafka-", suffix=".log", delete=False)  # noqa: SIM115
        self.started_in_s: float | None = None

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

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout_s: float = 120.0) -> KafkaBroker:
        """Gather (first time), start, and wait until the broker answers metadata requests."""
        missing = missing_tools(need_maven=False)
        if missing:
            raise FatalError(f"the Apache Kafka broker needs {' and '.join(missing)}: {INSTALL_HINT}")
        java = shutil.which("java")
        assert java is not None
        libs = gather(self.version)
        template = _template(self.version, libs, java)
        fixed_port = self.port is not None
        for attempt in range(3):  # a port picked free can be taken before the JVM binds it
            try:
                return self._start_once(java, libs, template, timeout_s)
            except _PortTaken:
                self.stop()
                if fixed_port or attempt == 2:
                    raise FatalError(f"Apache Kafka could not bind {self.bootstrap}: address in use; "
                                     f"see {self.log_path}") from None
                self.port = None
                log.info("a chosen port was taken before the broker bound it; trying others")
        raise AssertionError("unreachable")

    def _start_once(self, java: str, libs: Path, template: Path, timeout_s: float) -> KafkaBroker:
        started = time.monotonic()
        port, controller = free_ports(2, self.host)
        self.port = self.port or port
        self._dir = Path(tempfile.mkdtemp(prefix="kafka-node-"))
        storage = self._dir / "storage"
        shutil.copytree(template, storage)
        config = self._dir / "server.properties"
        config.write_text(_properties(NODE_SETTINGS | {
            "controller.quorum.voters": f"1@{self.host}:{controller}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "log.dirs": str(storage)} | self._settings))
        (self._dir / "log4j2.properties").write_text(_LOG4J2)
        cmd = [java, *self._jvm, f"-Djava.io.tmpdir={self._dir}",
               f"-Dlog4j2.configurationFile={self._dir / 'log4j2.properties'}",
               "-cp", f"{libs}/*", "kafka.Kafka", str(config)]
        self._log.truncate(0)
        self._log.seek(0)
        self._proc = subprocess.Popen(dies_with_parent(cmd), stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                if "Address already in use" in tail or "BindException" in tail:
                    raise _PortTaken
                raise FatalError(f"Apache Kafka exited with {self._proc.returncode} while starting; "
                                 f"log {self.log_path}:\n{tail}")
            if _accepts(self.host, self.port) and _answers(self.bootstrap):
                self.started_in_s = time.monotonic() - started
                log.info("Apache Kafka %s up bootstrap=%s in %.1fs log=%s", self.version, self.bootstrap,
                         self.started_in_s, self.log_path)
                return self
            time.sleep(0.1)
        self.stop()
        raise FatalError(f"Apache Kafka did not serve within {timeout_s:.0f}s; log {self.log_path}:\n"
                         f"{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a clean shutdown through Kafka's shutdown hook; the JVM then exits 143), SIGKILL
        after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Apache Kafka did not stop within %.0fs of SIGTERM: killing it", timeout_s)
                proc.kill()
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def _accepts(host: str, port: int | None) -> bool:
    # With a fixed port the listener opens only once request processing starts (after unfencing).
    if port is None:
        return False
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _answers(bootstrap: str) -> bool:
    try:
        conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG}
        AdminClient(conf).list_topics(timeout=2)
        return True
    except KafkaException:
        return False


def main() -> int:
    """``python -m streams.devtools.apache_kafka``: gather the jars and format the storage template now
    (``make tools`` does, so the test workers find them ready); prints where they are."""
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        missing = missing_tools(need_maven=not complete(home(KAFKA_VERSION) / "libs"))
        if missing:
            raise FatalError(f"the Apache Kafka broker needs {' and '.join(missing)}: {INSTALL_HINT}")
        libs = gather()
        java = shutil.which("java")
        assert java is not None
        _template(KAFKA_VERSION, libs, java)
    except FatalError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"Apache Kafka {KAFKA_VERSION} ready: {libs}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
