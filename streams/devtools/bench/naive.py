"""``naive``: what a user writes first. ``python -m streams.devtools.bench.naive BOOTSTRAP IN OUT URL SECONDS``.

poll one message -> one blocking HTTP call -> produce -> flush -> commit, in a loop, for SECONDS.
Prints one JSON line with the events handled and the time taken.
"""

from __future__ import annotations

import sys
import time
import urllib.request
import uuid

import orjson
from confluent_kafka import Consumer, Producer

from streams.devtools.bench.ideal import load_policy_cached
from streams.inference.prompt import build_request


def main(bootstrap: str, topic_in: str, topic_out: str, url: str, seconds: float, model: str) -> dict[str, float]:
    policy = load_policy_cached()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"naive-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "session.timeout.ms": 6000})
    producer = Producer({"bootstrap.servers": bootstrap})
    consumer.subscribe([topic_in])
    done, started = 0, None
    while started is None or time.monotonic() - started < seconds:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        if started is None:
            started = time.monotonic()
        event = orjson.loads(msg.value() or b"{}")
        body = orjson.dumps(build_request(policy, event["text"], model=model, reasoning_effort="low"))
        req = urllib.request.Request(url + "/chat/completions", data=body,  # noqa: S310 - loopback replica
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310
            answer = orjson.loads(resp.read())
        producer.produce(topic_out, key=msg.key(), value=orjson.dumps(
            {"event_id": event["event_id"], "answer": answer["choices"][0]["message"]["content"]}))
        producer.flush()
        consumer.commit(message=msg, asynchronous=False)
        done += 1
    consumer.close()
    return {"events": done, "elapsed_s": time.monotonic() - (started or time.monotonic())}


if __name__ == "__main__":
    b, i, o, u, s, m = sys.argv[1:7]
    sys.stdout.write(orjson.dumps(main(b, i, o, u, float(s), m)).decode() + "\n")
