"""Helpers for integration tests: produce, read back, write configs, run the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer

from streams.devtools.broker import reader_from_beginning
from streams.devtools.processes import dies_with_parent

ROOT = Path(__file__).resolve().parents[2]


# The input topic takes records up to 8 MiB (Kafka's default is 1 MB), as a deployment does whose
# content can be bigger than the consumer accepts (input.max_event_bytes): such an event must reach the
# consumer and become a too_large dead letter.
BIG_RECORDS = {"max.message.bytes": str(8 * 2**20)}


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 8_000_000})
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    for key, value in items:
        p.produce(topic, key=key, value=value, on_delivery=delivered)
        p.poll(0)
    assert p.flush(30) == 0
    # a record the broker refuses (e.g. over the topic's max.message.bytes) must fail the test here,
    # not later as a missing label
    assert not failed, f"{len(failed)} test events not delivered to {topic}: {failed[:3]}"


def read_all(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 60.0,
             isolation: str = "read_uncommitted") -> list[Any]:
    """Read a topic from the beginning until ``expect`` messages arrived (or the timeout).

    Partitions are assigned directly (no consumer group), so there is no join delay.
    """
    return read_until(bootstrap, topic, lambda out: len(out) >= expect, timeout_s=timeout_s, isolation=isolation)


def write_config(tmp_path: Path, bootstrap: str, names: dict[str, str], urls: list[str], *, name: str = "",
                 **extra: Any) -> Path:
    conf: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"g-{names['input']}",
                  "input_topics": [names["input"]], "labels_topic": names["labels"],
                  "dead_letter_topic": names["dlq"], "reasoning_topic": names["reasoning"],
                  "librdkafka": {"session.timeout.ms": 6000}},
        "replicas": {"urls": urls},
        "policies": {"dir": str(ROOT / "policies"), "default": ["spam"]},
        "metrics": {"port": 0},
    }
    for section, values in extra.items():
        if isinstance(values, dict):
            conf.setdefault(section, {}).update(values)
        else:
            conf[section] = values
    path = tmp_path / f"config-{names['input']}{name}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def safeguard(*args: str, timeout: float = 180, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


class ConsumerProcess:
    """``safeguard run`` (or another long-running command, e.g. ``escalate``) as a subprocess that
    tests can SIGKILL and restart."""

    def __init__(self, config: Path, log_path: Path, command: str = "run", *args: str) -> None:
        self.config = config
        self.log_path = log_path
        self.command = [command, *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, failpoints: str = "") -> ConsumerProcess:
        """Start (again); ``failpoints``: names the process stops itself at (streams/ops/failpoints.py)."""
        log = self.log_path.open("ab")
        env = {**os.environ, "STREAMS_FAILPOINTS": failpoints}
        self.proc = subprocess.Popen(dies_with_parent([sys.executable, "-m", "streams", *self.command, "--config",
                                                      str(self.config)]),
                                     stdout=log, stderr=log, env=env)
        return self

    def stopped(self) -> bool:
        """Stopped by a signal (a failpoint's SIGSTOP): the state letter in /proc/PID/stat is T."""
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat[stat.rindex(")") + 2] == "T"

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def read_until(bootstrap: str, topic: str, done: Any, *, timeout_s: float = 60.0,
               isolation: str = "read_uncommitted") -> list[Any]:
    """Read a topic from the beginning until ``done(messages)`` is true (or the timeout)."""
    c = reader_from_beginning(bootstrap, [topic], isolation=isolation)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(out) and time.monotonic() < deadline:
            out.extend(m for m in c.consume(500, 0.2) if m.error() is None)
    finally:
        c.close()
    return out


def read_to_end(bootstrap: str, topic: str, *, isolation: str = "read_uncommitted",
                timeout_s: float = 60.0) -> list[Any]:
    """Every record of ``topic`` up to the high watermarks as they are now: the end is the position
    reaching each watermark (transaction markers included), not a quiet period."""
    from confluent_kafka import TopicPartition

    c = reader_from_beginning(bootstrap, [topic], isolation=isolation)
    try:
        parts = [TopicPartition(tp.topic, tp.partition) for tp in c.assignment()]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out.extend(m for m in c.consume(500, 0.2) if m.error() is None)
            positions = {tp.partition: tp.offset for tp in c.position(parts)}
            if all(ends[p] == 0 or positions.get(p, -1) >= ends[p] for p in ends):
                return out
        raise AssertionError(f"{topic} not read to its end ({ends}) within {timeout_s} s")
    finally:
        c.close()


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes (replicas, a consumer) for the block, SIGCONT after it whatever happens:
    progress a test controls (a frozen replica answers nothing, so work stays in flight), not a timer."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def metric(port: int, name: str) -> float | None:
    """The sum of a metric's samples on a consumer's /metrics (None while it does not answer yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


def wait_metric(port: int, name: str, done: Any, timeout_s: float = 120.0) -> float:
    """Poll ``name`` on ``port`` until ``done(value)``; the timeout is a bound, not the assertion."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric(port, name)
        if value is not None and done(value):
            return value
        assert time.monotonic() < deadline, f"{name} on :{port} never satisfied the condition (last {value})"
        time.sleep(0.1)


def open_transaction_records(bootstrap: str, topic: str) -> int:
    """Records of ``topic`` behind its last stable offset: written in a transaction not committed or
    aborted yet. Per partition, the high watermark minus the end a read_committed reader is given
    (librdkafka's watermark query answers the last stable offset at that isolation level)."""
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    ends = {}
    for isolation in ("read_uncommitted", "read_committed"):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lso-{uuid.uuid4().hex[:8]}",
                      "isolation.level": isolation, "enable.auto.commit": False})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            ends[isolation] = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                               for p in sorted(parts)]
        finally:
            c.close()
    return sum(high - stable for high, stable in zip(ends["read_uncommitted"], ends["read_committed"], strict=True))


class TransactionProbe:
    """``open_transaction_records`` with its two consumers kept open, for a test that looks often
    (each look is a few watermark requests rather than two client start-ups)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        import uuid

        from confluent_kafka import Consumer, TopicPartition

        self.consumers = [Consumer({"bootstrap.servers": bootstrap, "group.id": f"lso-{uuid.uuid4().hex[:8]}",
                                    "isolation.level": isolation, "enable.auto.commit": False})
                          for isolation in ("read_uncommitted", "read_committed")]
        parts = self.consumers[0].list_topics(topic, timeout=10).topics[topic].partitions
        self.parts = [TopicPartition(topic, p) for p in sorted(parts)]

    def open_records(self) -> int:
        high, stable = ([c.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.parts]
                        for c in self.consumers)
        return sum(h - s for h, s in zip(high, stable, strict=True))

    def __enter__(self) -> TransactionProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self.consumers:
            c.close()


def group_committed(bootstrap: str, group: str, topic: str) -> int:
    """The sum of ``group``'s committed offsets on ``topic`` (what it will not consume again).
    Read uncommitted: librdkafka's default (read_committed) asks for stable offsets, and the broker
    keeps answering "unstable" while a transaction holding the group's offsets is open, as a
    SIGKILLed exactly-once consumer's stays until its successor starts."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_uncommitted"})
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        return sum(max(0, tp.offset) for tp in c.committed(parts, timeout=10))
    finally:
        c.close()
