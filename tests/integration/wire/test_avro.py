"""Avro in and out through the pipeline on the real broker, with the in-memory Schema Registry."""

from __future__ import annotations

import uuid

import orjson
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.app import run_consumer
from streams.config import load_settings
from streams.wire.codec import registry_client, schema_str
from tests.integration.helpers import produce, read_all, write_config


async def test_avro_round_trip_with_mock_registry(kafka_bootstrap, topics, sims, answer_key, tmp_path) -> None:
    names = topics(partitions=2)
    url = f"mock://safeguard-{uuid.uuid4().hex[:8]}"  # a real registry URL is all a user changes
    client = registry_client(url)
    serialize = AvroSerializer(client, schema_str("content"))
    ctx = SerializationContext(names["input"], MessageField.VALUE)
    events = [{"event_id": f"a{i}", "kind": "review" if i % 2 else "chat",
               "text": None if i % 2 == 0 else f"review text {i}",
               "messages": [{"role": "user", "content": f"chat turn {i}"}] if i % 2 == 0 else None,
               "policies": None, "metadata": {"shop": "x"}, "created_at": None} for i in range(10)]
    items = [(e["event_id"].encode(), serialize(e, ctx)) for e in events] + [(b"junk", b"not avro at all")]
    produce(kafka_bootstrap, names["input"], items)
    key = answer_key([{"text": "review text 1", "label": 1, "category": "SP1"}])
    replica = sims(1, answer_key=key).urls[0]
    config = write_config(tmp_path, kafka_bootstrap, names, [replica], input={"format": "avro"},
                          output={"format": "avro"}, schema_registry={"url": url})
    await run_consumer(load_settings(config), until_idle=3.0)

    read_label = AvroDeserializer(client, schema_str("label"))
    labels = [read_label(m.value(), SerializationContext(names["labels"], MessageField.VALUE))
              for m in read_all(kafka_bootstrap, names["labels"], expect=10)]
    assert sorted(lab["event_id"] for lab in labels) == sorted(e["event_id"] for e in events)
    by_id = {lab["event_id"]: lab for lab in labels}
    assert by_id["a1"]["violation"] is True and by_id["a3"]["violation"] is False
    assert by_id["a0"]["metadata"] == {"shop": "x"} and by_id["a0"]["source"]["topic"] == names["input"]
    read_dlq = AvroDeserializer(client, schema_str("dead_letter"))
    letters = [read_dlq(m.value(), SerializationContext(names["dlq"], MessageField.VALUE))
               for m in read_all(kafka_bootstrap, names["dlq"], expect=1)]
    assert [d["error_type"] for d in letters] == ["invalid_avro"]
    subjects = client.get_subjects()
    assert f"{names['labels']}-value" in subjects and f"{names['dlq']}-value" in subjects


def test_an_unreachable_registry_stops_the_start_naming_it_and_loses_nothing(kafka_bootstrap, topics, sims,
                                                                               tmp_path) -> None:
    """Labels that cannot be written must not cost a model call, freeze a partition or be dropped:
    with the registry down the consumer refuses to start, saying which registry, before consuming."""
    from streams.devtools.broker import free_port
    from tests.integration.helpers import safeguard

    names = topics(partitions=2)
    produce(kafka_bootstrap, names["input"], [(f"k{i}".encode(), orjson.dumps({"event_id": f"e{i}", "text": f"t{i}"}))
                                              for i in range(5)])
    replica = sims(1).urls[0]
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(tmp_path, kafka_bootstrap, names, [replica], output={"format": "avro"},
                          schema_registry={"url": down})
    proc = safeguard("--log-level", "warning", "run", "--config", str(config), "--until-idle", "3", timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"schema registry unreachable at {down}" in proc.stderr
    assert read_all(kafka_bootstrap, names["labels"], expect=1, timeout_s=1) == []
    assert read_all(kafka_bootstrap, names["dlq"], expect=1, timeout_s=1) == []
    up = write_config(tmp_path, kafka_bootstrap, names, [replica], name="-up", output={"format": "avro"},
                      schema_registry={"url": f"mock://up-{uuid.uuid4().hex[:6]}"})
    assert safeguard("run", "--config", str(up), "--until-idle", "3", timeout=120).returncode == 0
    assert len(read_all(kafka_bootstrap, names["labels"], expect=5)) == 5  # nothing had been committed
