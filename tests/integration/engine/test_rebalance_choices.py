"""A rebalance's commit, on a real broker: the member that gives partitions up commits their positions
inside its revoke callback, before the next owner starts (issue 23, choices revisited on Kafka).

confluent-kafka serialises calls into one consumer across threads, and the consumer thread waits in
the revoke callback for the event loop: a commit the loop made directly waited for the callback to
end (60 s, its bound), the next owner started from older offsets, and with exactly-once the late
transaction made labels visible twice. The scenario makes the revoke's commit certain: member A
labels every event without committing (a commit interval of an hour), then B joins.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.integration.helpers import ConsumerProcess, produce, read_to_end, read_until, write_config


def _events(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), orjson.dumps({"event_id": f"e{i}", "text": f"rebalance message {i}"}))
            for i in range(n)]


def _wait_for_log(consumer: ConsumerProcess, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in consumer.log():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{consumer.log()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_the_next_owner_starts_where_the_revoke_committed(delivery, kafka_bootstrap, topics, sims, consumers,
                                                          broker_hides_aborted, tmp_path: Path) -> None:
    n = 400
    names = topics(partitions=4)
    urls = sims(2, time_scale=20.0).urls
    produce(kafka_bootstrap, names["input"], _events(n))

    def config(member: str, interval_s: float) -> Path:
        kafka = {"transactional_id": f"tx-{names['input']}-{member}"}
        return write_config(tmp_path, kafka_bootstrap, names, urls, name=f"-{member}", delivery=delivery,
                            kafka=kafka, batching={"commit_interval_s": interval_s})

    a = consumers(config("a", 3600.0))
    everything = read_until(kafka_bootstrap, names["labels"],
                            lambda out: len({orjson.loads(m.value())["event_id"] for m in out}) >= n, timeout_s=120)
    assert len({orjson.loads(m.value())["event_id"] for m in everything}) == n, "A did not label every event"
    b = consumers(config("b", 0.3))
    _wait_for_log(a, "revoked partitions=in-", timeout_s=120)
    _wait_for_log(b, "assigned partitions=in-", timeout_s=120)
    assert "did not finish" not in a.log(), "the revoke waited for its own callback (a consumer call off its thread)"
    time.sleep(3)  # B would be labelling again now, had it started behind A's positions
    assert a.terminate() == 0 and b.terminate() == 0
    labels = read_to_end(kafka_bootstrap, names["labels"])
    again = Counter(orjson.loads(m.value())["event_id"] for m in labels)
    assert len(again) == n and sum(again.values()) == n, \
        f"{sum(again.values()) - n} events labelled again: the next owner started behind the revoke's commit"
    if delivery == "exactly_once" and broker_hides_aborted:
        visible = Counter(orjson.loads(m.value())["event_id"]
                          for m in read_to_end(kafka_bootstrap, names["labels"], isolation="read_committed"))
        assert set(visible) == {f"e{i}" for i in range(n)} and max(visible.values()) == 1
