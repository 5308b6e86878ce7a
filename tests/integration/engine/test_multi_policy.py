"""Several policies per event: separate vs combined requests, and shadow policies."""

from __future__ import annotations

import shutil
import urllib.request

import orjson

from streams.app import run_consumer
from streams.config import load_settings
from streams.devtools.broker import create_topics
from tests.integration.helpers import ROOT, produce, read_all, write_config

N = 40


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


async def run_mode(mode: str, kafka_bootstrap, topics, sims, answer_key, tmp_path) -> dict:
    names = topics(partitions=2)
    rows, items = [], []
    for i in range(N):
        text = f"post {i}: " + ("selling aimbot, cheap, DM me" if i % 4 == 0 else "nice match yesterday")
        items.append((f"k{i}".encode(), orjson.dumps({"event_id": f"e{i}", "text": text})))
        rows.append({"text": text, "label": int(i % 4 == 0), "policy": "game-cheating"})
        rows.append({"text": text, "label": int(i % 8 == 0), "policy": "spam"})
    url = sims(1, answer_key=answer_key(rows)).urls[0]
    produce(kafka_bootstrap, names["input"], items)
    config = write_config(tmp_path, kafka_bootstrap, names, [url],
                          policies={"dir": str(ROOT / "policies"), "default": ["spam", "game-cheating"],
                                    "mode": mode})
    await run_consumer(load_settings(config), until_idle=3.0)
    labels = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, names["labels"], expect=2 * N)]
    return {
        "labels": labels,
        "requests": metric(url, "vllm:e2e_request_latency_seconds_count"),
        "prompt_tokens": metric(url, "vllm:prompt_tokens_total"),
        "uncached_prompt_tokens": metric(url, "vllm:prompt_tokens_total") - metric(url, "vllm:prefix_cache_hits_total"),
        "generation_tokens": metric(url, "vllm:generation_tokens_total"),
    }


async def test_combined_mode_one_request_per_event_same_verdicts(
        kafka_bootstrap, topics, sims, answer_key, tmp_path) -> None:
    sep = await run_mode("separate", kafka_bootstrap, topics, sims, answer_key, tmp_path)
    comb = await run_mode("combined", kafka_bootstrap, topics, sims, answer_key, tmp_path)
    for res in (sep, comb):
        verdicts = {(lab["event_id"], lab["policy_id"]): lab["violation"] for lab in res["labels"]}
        assert len(verdicts) == 2 * N
        for i in range(N):
            assert verdicts[(f"e{i}", "game-cheating")] is (i % 4 == 0)
            assert verdicts[(f"e{i}", "spam")] is (i % 8 == 0)
    assert sep["requests"] == 2 * N and comb["requests"] == N
    # Every policy text is sent once per event either way; combining saves the repeated content and
    # per-request overhead, and adds a short header: for short posts the totals are about equal.
    assert abs(comb["prompt_tokens"] - sep["prompt_tokens"]) < 0.1 * sep["prompt_tokens"]
    assert comb["uncached_prompt_tokens"] <= sep["uncached_prompt_tokens"]
    # usage is split over a combined request's labels, so it still sums to the replica's count
    assert sum(lab["usage"]["prompt_tokens"] for lab in comb["labels"]) == comb["prompt_tokens"]
    print(f"\nmulti-policy measurement (2 policies, {N} events):")
    for key in ("requests", "prompt_tokens", "uncached_prompt_tokens", "generation_tokens"):
        print(f"  {key}: separate={sep[key]:.0f} combined={comb[key]:.0f} ratio={comb[key] / sep[key]:.2f}")


async def test_shadow_policy_labels_go_to_the_shadow_topic(kafka_bootstrap, topics, sims, tmp_path) -> None:
    names = topics(partitions=1)
    create_topics(kafka_bootstrap, {names["labels"] + ".shadow": 1})
    pol_dir = tmp_path / "policies"
    pol_dir.mkdir()
    shutil.copy(ROOT / "policies/spam.md", pol_dir / "spam.md")
    v2 = (ROOT / "policies/spam.md").read_text().replace("id: spam", "id: spam-v2\nshadow: true").replace(
        "(policy spam)", "(policy spam-v2)")
    (pol_dir / "spam-v2.md").write_text(v2)
    url = sims(1).urls[0]
    produce(kafka_bootstrap, names["input"],
            [(f"k{i}".encode(), orjson.dumps({"event_id": f"e{i}", "text": f"hello {i}"})) for i in range(5)])
    config = write_config(tmp_path, kafka_bootstrap, names, [url],
                          policies={"dir": str(pol_dir), "default": ["spam", "spam-v2"]})
    await run_consumer(load_settings(config), until_idle=3.0)
    main = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, names["labels"], expect=5)]
    shadow = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, names["labels"] + ".shadow", expect=5)]
    assert {lab["policy_id"] for lab in main} == {"spam"} and len(main) == 5
    assert {lab["policy_id"] for lab in shadow} == {"spam-v2"} and len(shadow) == 5


async def test_duplicate_content_is_decided_once(kafka_bootstrap, topics, sims, tmp_path) -> None:
    names = topics(partitions=2)
    url = sims(1).urls[0]
    texts = ["Great product!!! buy now", "GREAT product!!!   buy NOW", "a different review", "third text"]
    produce(kafka_bootstrap, names["input"],
            [(f"k{i}".encode(), orjson.dumps({"event_id": f"e{i}", "text": texts[i % 4]})) for i in range(40)])
    await run_consumer(load_settings(write_config(tmp_path, kafka_bootstrap, names, [url])), until_idle=3.0)
    labels = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, names["labels"], expect=40)]
    assert len({lab["event_id"] for lab in labels}) == 40
    by = {lab["decided_by"] for lab in labels}
    assert by == {"model", "cache"}
    assert metric(url, "vllm:e2e_request_latency_seconds_count") == 3  # the first two texts normalise alike
    assert all(lab["usage"]["completion_tokens"] == 0 for lab in labels if lab["decided_by"] == "cache")
