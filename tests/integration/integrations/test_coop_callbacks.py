"""Coop's decisions back in, on the real broker: ``safeguard coop callbacks`` refuses every forged
callback (401, nothing produced), turns each signed one into a review event, and ``eval
--from-reviews`` scores the policy against those moderators' decisions."""

from __future__ import annotations

import asyncio
import json
import time

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from streams.app import run_consumer
from streams.authoring.datasets import load_dataset
from streams.config import load_settings
from streams.devtools.broker import create_topics
from tests.fake_coop import FakeCoop, post_callback
from tests.integration.helpers import ROOT, produce, read_to_end, safeguard, write_config

SPAM = ROOT / "policies/spam.md"


def listening_port(process, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in process.log().splitlines():
            if line.startswith('{"port"'):
                return int(json.loads(line)["port"])
        assert process.alive(), process.log()[-3000:]
        time.sleep(0.1)
    raise AssertionError("the callbacks endpoint never said its port")


async def test_forged_callbacks_are_refused_and_signed_ones_become_reviews_that_eval_scores(
        kafka_bootstrap, topics, sims, answer_key, consumers, tmp_path) -> None:
    n = 40
    names = topics(partitions=2)
    reviews = names["labels"].replace("labels-", "reviews-")
    create_topics(kafka_bootstrap, {reviews: 2})
    golden = load_dataset(ROOT / "policies/spam.golden.jsonl").items[:n]
    urls = sims(1, answer_key=answer_key([{"text": i.text, "label": i.label, "policy": "spam"} for i in golden])).urls
    coop = FakeCoop()
    path = write_config(tmp_path, kafka_bootstrap, names, urls, cache={"max_entries": 0},
                        integrations={"coop": {"callback_secret": coop.public_pem, "reviews_topic": reviews,
                                               "policy_map": {"pol-77": "spam"}}})
    produce(kafka_bootstrap, names["input"], [(f"k{k}".encode(), orjson.dumps({"event_id": f"e{k}", "text": i.text}))
                                              for k, i in enumerate(golden)])
    await run_consumer(load_settings(path), until_idle=3.0)

    server = consumers(path, "coop", "callbacks", "--port", "0")
    url = f"http://127.0.0.1:{listening_port(server)}/coop/actions"
    body = FakeCoop.callback_body("e0", policies=[("pol-9", "Spam")])
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tampered = body.replace(b'"e0"', b'"e1"')
    forged = [(body, None), (body, ""), (body, "bm90IGEgc2lnbmF0dXJl"), (body, "%%%not base64%%%"),
              (body, coop.sign(body, other_key)), (tampered, coop.sign(body)),
              (FakeCoop.callback_body("e2", actor="mallory@example.com"), coop.sign(body))]
    for forged_body, signature in forged:
        status, answer = await post_callback(url, forged_body, signature)
        assert status == 401, (signature, answer)
    status, _ = await post_callback(url, b"[1, 2]", coop.sign(b"[1, 2]"))  # signed, but not a callback
    assert status == 400
    huge = FakeCoop.callback_body("e3", actor="x" * (2 << 20))
    status, _ = await post_callback(url, huge, coop.sign(huge))  # over 1 MiB: refused before anything is read
    assert status == 413

    # moderators named spam on every other event (by its name in Coop, "Spam", or as a Coop policy mapped to it
    # by integrations.coop.policy_map), another policy of ours (harassment) or nothing on the others, and a
    # Coop policy that is none of ours on a few: those say nothing about spam, and are left unscored
    def named(k: int) -> list[tuple[str, str]]:
        if k % 2 == 0:
            return [("pol-9", "Spam")] if k % 4 == 0 else [("pol-77", "Commercial junk")]
        return [("pol-5", "Harassment")] if k % 3 == 0 else [("pol-8", "Not one of ours")] if k % 5 == 1 else []

    unknown = {k for k in range(n) if k % 2 == 1 and k % 3 != 0 and k % 5 == 1}
    assert unknown
    accepted = {}
    for k in range(n):
        cb = FakeCoop.callback_body(f"e{k}", policies=named(k))
        status, answer = await post_callback(url, cb, coop.sign(cb))
        assert status == 200, answer
        accepted[f"e{k}"] = answer["review_id"]
    status, again = await post_callback(url, body, coop.sign(body))  # Coop's same callback again: same review
    assert status == 200 and again["review_id"] == accepted["e0"]
    assert server.terminate() == 0

    events = [orjson.loads(m.value()) for m in read_to_end(kafka_bootstrap, reviews)]
    assert len(events) == n + 1 and {e["event_id"] for e in events} == set(accepted)  # nothing from a forgery
    assert all(e["actor"] == "mod@example.com" and e["action"] == "act-remove" for e in events)
    assert {e["review_id"] for e in events} == set(accepted.values())

    proc = await asyncio.to_thread(safeguard, "eval", "--policy", str(SPAM), "--from-reviews", "--config", str(path),
                                   "--replica", urls[0], "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    scored = [k for k in range(n) if k not in unknown]
    model = [golden[k].label for k in scored]  # the simulated model answers from the golden set
    gold = [int(k % 2 == 0) for k in scored]
    tp = sum(m and g for m, g in zip(model, gold, strict=True))
    fp = sum(m and not g for m, g in zip(model, gold, strict=True))
    fn = sum(g and not m for m, g in zip(model, gold, strict=True))
    assert doc["n"] == len(scored) and doc["errors"] == 0
    assert (doc["tp"], doc["fp"], doc["fn"], doc["tn"]) == (tp, fp, fn, len(scored) - tp - fp - fn)

    # the same reviews teach the prefilter: every reviewed event is an example, labelled as the moderators did
    out = tmp_path / "spam.prefilter"
    proc = await asyncio.to_thread(safeguard, "prefilter", "train", "--policy", str(SPAM), "--from-reviews",
                                   "--config", str(path), "--out", str(out), "--holdout", "0.3", "--certify-available",
                                   "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads(proc.stdout.strip().splitlines()[-1])
    assert trained["n_train"] + trained["n_holdout"] == len(scored) and trained["positives"] == sum(gold)
    assert out.exists()
