"""Secrets never reach logs or repr; content never reaches INFO logs (issue: production readiness)."""

from __future__ import annotations

import logging

import orjson
import pytest

from streams.app import run_consumer
from streams.config import load_settings
from streams.inference.replicas.client import ReplicaClient
from streams.kafka.config import consumer_config, producer_config
from tests.integration.helpers import produce, read_all, write_config

SASL = "sasl-TOPSECRET-1"
KEY_PASS = "keypass-TOPSECRET-2"
RAW = "raw-TOPSECRET-3"
API_KEY = "sk-TOPSECRET-4"
CONTENT = "CONTENT-MARKER-5 please buy my followers"


def test_typed_security_renders_into_librdkafka_and_hides_secrets() -> None:
    s = load_settings(None, {"kafka": {"security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                                    "sasl_username": "u", "sasl_password": SASL,
                                                    "ssl_key_password": KEY_PASS},
                                       "librdkafka": {"sasl.oauthbearer.config": RAW}},
                             "replicas": {"api_key": API_KEY}})
    for text in (repr(s), str(s), repr(s.kafka), s.model_dump_json()):
        for secret in (SASL, KEY_PASS, RAW, API_KEY):
            assert secret not in text
    conf = consumer_config(s.kafka)
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.password"] == SASL
    assert producer_config(s.kafka)["ssl.key.password"] == KEY_PASS
    assert ReplicaClient("http://r:8000/v1", api_key=API_KEY, timeout_s=1)._headers["Authorization"] == (
        f"Bearer {API_KEY}")


async def test_a_run_logs_no_secret_and_no_content(kafka_bootstrap, topics, sims, tmp_path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    names = topics(partitions=1)
    url = sims(1).urls[0]
    produce(kafka_bootstrap, names["input"], [(b"k", orjson.dumps({"event_id": "e1", "text": CONTENT})),
                                              (b"bad", CONTENT.encode())])  # also a dead letter
    config = write_config(tmp_path, kafka_bootstrap, names, [url], replicas={"urls": [url], "api_key": API_KEY})
    settings = load_settings(config, {"kafka": {"security": {"sasl_password": SASL}}})
    with caplog.at_level(logging.DEBUG):
        await run_consumer(settings, until_idle=3.0)
    assert read_all(kafka_bootstrap, names["labels"], expect=1)
    assert read_all(kafka_bootstrap, names["dlq"], expect=1)
    text = caplog.text
    assert "consumer started" in text and "dead letter" in text  # the logs were captured
    for secret in (SASL, API_KEY):
        assert secret not in text
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "CONTENT-MARKER-5" not in info
