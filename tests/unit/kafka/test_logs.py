"""librdkafka's log lines through Python logging: key=value, limited per client and facility."""

from __future__ import annotations

import logging

import pytest

from streams.kafka.logs import LibrdkafkaLog


def test_lines_are_key_value_and_limited_per_client_and_facility(caplog: pytest.LogCaptureFixture) -> None:
    log = LibrdkafkaLog(logging.getLogger("test.librdkafka"), interval_s=60)
    caplog.set_level(logging.DEBUG, logger="test.librdkafka")
    for _ in range(5):  # confluent-kafka's call shape
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to ipv4#127.0.0.1:1 failed")
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-2", "Connect failed")
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#consumer-1", "property ignored")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["librdkafka fac=FAIL client=rdkafka#consumer-1 Connect to ipv4#127.0.0.1:1 failed",
                     "librdkafka fac=FAIL client=rdkafka#producer-2 Connect failed",
                     "librdkafka fac=CONFWARN client=rdkafka#consumer-1 property ignored"]
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR, logging.WARNING]


def test_another_call_shape_keeps_the_text() -> None:
    seen: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("test.librdkafka.other")
    logger.addHandler(Sink())
    logger.setLevel(logging.INFO)
    LibrdkafkaLog(logger).log(logging.INFO, "plain %s", "text")
    assert seen == ["librdkafka fac=- client=- plain text"]
