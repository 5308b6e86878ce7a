"""10,000 hostile inputs through the real pipeline: none crashes it or stalls a partition, every
rejected input is a dead letter carrying its original bytes, every valid one is labelled."""

from __future__ import annotations

import base64
import hashlib
import json
import random

import orjson

from streams.app import run_consumer
from streams.config import load_settings
from streams.errors import PoisonError
from streams.wire.events import DEAD_LETTER_VALUE_LIMIT, decode_content
from tests.integration.helpers import BIG_RECORDS, produce, read_all, write_config

N = 10_000
MAX_BYTES = 8192


def corpus(seed: int = 11) -> list[bytes]:
    rng = random.Random(seed)
    valid = {"event_id": "v", "kind": "message", "text": "hello"}
    weird = ["\u202e", "\u200b", "\x00", "\U0001f600", "e\u0301", "\ufeff", "\u0627\u0644", "\\", '"']

    def one(i: int) -> bytes:
        pick = rng.random()
        if pick < 0.15:
            return rng.randbytes(rng.randint(0, 300))
        if pick < 0.25:
            return orjson.dumps({**valid, "event_id": f"t{i}"})[: rng.randint(1, 40)]  # truncated JSON
        if pick < 0.32:
            depth = rng.randint(50, 3000)
            return b"[" * depth + b"]" * depth
        if pick < 0.40:
            return b'{"event_id": "u' + rng.randbytes(4) + b'\xff\xfe", "text": "x"}'  # invalid UTF-8
        if pick < 0.55:
            field = rng.choice(["event_id", "kind", "text", "messages", "policies", "metadata", "created_at"])
            bad = rng.choice([1, 2.5, None, True, [], {}, [1, 2], {"a": 1}, "", "x" * 300, "not-a-date"])
            return json.dumps({**valid, "event_id": f"w{i}", field: bad}).encode()
        if pick < 0.62:
            return json.dumps(rng.choice([[], "string", 42, None, [valid]])).encode()
        if pick < 0.70:
            return json.dumps({"event_id": f"c{i}", "kind": "chat",
                               "messages": rng.choice([[], [{"role": "bot", "content": "x"}], "nope"])}).encode()
        if pick < 0.72:
            big = "a" * (MAX_BYTES + rng.randint(1, 5000))
            return json.dumps({**valid, "event_id": f"big{i}", "text": big}).encode()
        if pick < 0.80:
            text = "".join(rng.choice(weird + ["abc", " "]) for _ in range(rng.randint(1, 30)))
            return json.dumps({**valid, "event_id": f"uni{i}", "text": text}, ensure_ascii=rng.random() < 0.5).encode()
        if pick < 0.83:
            return json.dumps({**valid, "event_id": f"ok{i}", "text": f"plain valid message {i}"}).encode()
        return rng.choice([b"", b" ", b"{", b"}", b"null", b"{}", b'{"event_id": null}', b"\x00" * 10,
                           b'{"event_id": "x", "text": "y"', b"{'event_id': 'x'}"])

    items = [one(i) for i in range(N)]
    items.append(json.dumps({**valid, "event_id": "huge", "text": "z" * (1024 * 1024 + 1)}).encode())
    return items


def expected_valid(raw: bytes) -> bool:
    try:
        decode_content(raw, max_bytes=MAX_BYTES)
        return True
    except PoisonError:
        return False


async def test_ten_thousand_hostile_inputs(kafka_bootstrap, topics, sims, tmp_path) -> None:
    names = topics(partitions=4, input_config=BIG_RECORDS)
    inputs = corpus()
    produce(kafka_bootstrap, names["input"], [(str(i).encode(), raw) for i, raw in enumerate(inputs)])
    urls = sims(1, time_scale=100.0).urls
    config = write_config(tmp_path, kafka_bootstrap, names, urls, input={"max_event_bytes": MAX_BYTES})
    await run_consumer(load_settings(config), until_idle=4.0)

    valid = {i for i, raw in enumerate(inputs) if expected_valid(raw)}
    letters = read_all(kafka_bootstrap, names["dlq"], expect=len(inputs) - len(valid), timeout_s=60)
    labels = read_all(kafka_bootstrap, names["labels"], expect=len(valid), timeout_s=60)
    by_key = {int(base64.b64decode(d["key"])): d for m in letters for d in [orjson.loads(m.value())]}
    labelled = {int(m.key()) for m in labels}
    assert labelled == valid
    assert set(by_key) == set(range(len(inputs))) - valid  # every rejected input has a dead letter
    for i, letter in by_key.items():
        original = inputs[i]
        assert letter["error_type"] in {"invalid_json", "schema_violation", "too_large"}
        kept = base64.b64decode(letter["value"] or "")
        assert kept == original[:DEAD_LETTER_VALUE_LIMIT]
        assert letter["value_sha256"] == hashlib.sha256(original).hexdigest()
    print(f"\nSCENARIO fuzz: inputs={len(inputs)} labelled={len(labelled)} dead_letters={len(by_key)} "
          f"error_types={sorted({d['error_type'] for d in by_key.values()})}")
