"""Helpers for integration tests: produce, read back, write configs, run the CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer

from streams.devtools.broker import reader_from_beginning

ROOT = Path(__file__).resolve().parents[2]


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 8_000_000})
    for key, value in items:
        p.produce(topic, key=key, value=value)
        p.poll(0)
    assert p.flush(30) == 0


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

    def start(self) -> ConsumerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams", *self.command, "--config", str(self.config)],
                                     stdout=log, stderr=log)
        return self

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
