"""Metrics and health endpoints of a running consumer (docs/development.md)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import orjson

from streams.app import run_consumer
from streams.config import load_settings
from streams.devtools.broker import free_port
from streams.engine.pipeline import Pipeline
from tests.integration.helpers import produce, read_all, write_config


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def wait_until(check, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await asyncio.to_thread(check):
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.2)


# The endpoints run on the consumer's event loop, which is this test's loop: HTTP calls go through
# a thread so the loop stays free to answer them.
async def test_metrics_and_readiness_follow_the_pipeline(kafka_bootstrap, topics, sims, tmp_path) -> None:
    names = topics(partitions=2)
    replicas = sims(1)
    port = free_port()
    produce(kafka_bootstrap, names["input"],
            [(f"k{i}".encode(), orjson.dumps({"event_id": f"event-id-{i}", "text": f"hello {i}"})) for i in range(30)]
            + [(b"bad", b"{not json")])
    config = write_config(tmp_path, kafka_bootstrap, names, replicas.urls, metrics={"port": port},
                          kafka={"bootstrap_servers": kafka_bootstrap, "group_id": f"g-{names['input']}",
                                 "input_topics": [names["input"]], "labels_topic": names["labels"],
                                 "dead_letter_topic": names["dlq"],
                                 "librdkafka": {"session.timeout.ms": 6000, "statistics.interval.ms": 500}})
    holder: list[Pipeline] = []
    task = asyncio.create_task(run_consumer(load_settings(config), on_pipeline=holder.append))
    try:
        await asyncio.to_thread(read_all, kafka_bootstrap, names["labels"], expect=30)
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        await wait_until(lambda: get(port, "/readyz")[0] == 200)
        await wait_until(lambda: "safeguard_consumer_lag{" in get(port, "/metrics")[1])
        text = (await asyncio.to_thread(get, port, "/metrics"))[1]
        assert sample(text, "safeguard_events_consumed_total") == 31
        assert sample(text, "safeguard_labels_produced_total") == 30
        assert sample(text, "safeguard_dead_letters_total") == 1
        assert sample(text, "safeguard_inference_requests_total") >= 30
        assert 'safeguard_replica_healthy{replica="' + replicas.urls[0] + '"} 1.0' in text
        assert "safeguard_policy_info{" in text and "safeguard_event_latency_seconds_bucket" in text
        # No content or event ids in labels (ids distinctive enough not to occur in random topic names).
        assert "hello 1" not in text and "event-id-" not in text
        replicas.kill(0)  # no traffic now: the scraper still notices, readiness flips
        await wait_until(lambda: get(port, "/readyz")[0] == 503)
        text = (await asyncio.to_thread(get, port, "/metrics"))[1]
        assert 'safeguard_replica_healthy{replica="' + replicas.urls[0] + '"} 0.0' in text
        replicas.start_one(0)
        await wait_until(lambda: get(port, "/readyz")[0] == 200)
    finally:
        if holder:
            holder[0].stop()
        await task
