"""A real librdkafka client that cannot reach its broker: its complaints arrive through Python
logging, never as raw ``%3|...|FAIL|`` lines on stderr."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

from streams.config import KafkaSettings
from streams.devtools.broker import free_port
from streams.kafka.config import producer_config


def test_librdkafka_lines_go_through_logging(caplog: pytest.LogCaptureFixture,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="streams.librdkafka")
    producer = Producer(producer_config(KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")))
    deadline = time.monotonic() + 20
    while not caplog.records and time.monotonic() < deadline:
        producer.poll(0.2)  # log lines are served by poll, on this thread
    producer.flush(0)
    assert any(r.getMessage().startswith("librdkafka fac=") and "client=rdkafka#producer" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert "|FAIL|" not in capfd.readouterr().err
