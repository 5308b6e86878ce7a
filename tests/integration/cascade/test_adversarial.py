"""The cascade against an adversary and against drift, on the real broker and the simulator:
obfuscated violations never buy a prefilter decision, and when the traffic shifts to phrasings the
prefilter never saw, its controller sends more to the model while recall still holds."""

from __future__ import annotations

import logging
import random
import shutil
import unicodedata
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from streams.app import run_consumer
from streams.cascade.model import load_prefilter
from streams.cascade.train import Example, train
from streams.config import load_settings
from streams.devtools.bench.reviews import ReviewWriter
from streams.devtools.obfuscate import TRICKS, obfuscate
from streams.policy.model import load_policy
from tests.integration.cascade.test_cascade import labels_of, model_requests
from tests.integration.helpers import ROOT, produce, write_config


def _setup(tmp_path: Path, policy_id: str, examples: list[Example], target: float) -> tuple[Path, Path, float]:
    policies, prefilters = tmp_path / "policies", tmp_path / "prefilters"
    policies.mkdir()
    prefilters.mkdir()
    shutil.copy(ROOT / f"policies/{policy_id}.md", policies / f"{policy_id}.md")
    policy = load_policy(policies / f"{policy_id}.md")
    trained = train(policy, examples, target_recall=target, certify_available=True)
    trained.prefilter.save(prefilters / f"{policy_id}.prefilter")
    return policies, prefilters, trained.prefilter.threshold


def _config(tmp_path: Path, bootstrap: str, names: dict, url: str, policies: Path, prefilters: Path,
            policy_id: str, **prefilter: object) -> Path:
    return write_config(tmp_path, bootstrap, names, [url],
                        policies={"dir": str(policies), "default": [policy_id], "reload_interval_s": 0},
                        prefilter={"dir": str(prefilters), **prefilter}, cache={"max_entries": 0})


async def test_obfuscated_violations_all_reach_the_model(kafka_bootstrap, topics, sims, answer_key,
                                                         tmp_path) -> None:
    """A prefilter trained on 2,500 reviews; violations it never saw, each obfuscated with one trick
    or a mix, among ordinary safe reviews: none is decided by the prefilter, every one is flagged."""
    writer = ReviewWriter(seed=3)
    history = [Example(r.text, r.label) for r in writer.batch(2500, "A", 0.3)]
    policies, prefilters, threshold = _setup(tmp_path, "fake-reviews", history, 0.95)
    rng = random.Random(5)
    tricks = sorted(set(TRICKS) - {"leet"})  # leetspeak raises no flag (casual text is full of it): see below
    combos = [[t] for t in tricks] + [[a, b] for a in tricks for b in tricks if a < b] + [tricks[:3], tricks[3:6]]
    rows, evil, events, leet = [], set(), [], {}
    for k in range(240):
        text = obfuscate(writer.review("A", violation=True).text, rng, combos[k % len(combos)])
        evil.add(f"o{k}")
        rows.append({"text": text, "label": 1})  # the reasoner sees through the tricks
        events.append((f"o{k}".encode(), orjson.dumps({"event_id": f"o{k}", "kind": "review", "text": text})))
    for k in range(40):  # leetspeak alone: not flagged, but spelt back, so it scores as the plain text does
        plain = writer.review("A", violation=True).text
        text = obfuscate(plain, rng, ["leet"])
        leet[f"l{k}"] = plain
        rows.append({"text": text, "label": 1})
        events.append((f"l{k}".encode(), orjson.dumps({"event_id": f"l{k}", "kind": "review", "text": text})))
    for k, review in enumerate(writer.batch(160, "A", 0.0)):  # ordinary safe traffic beside them
        rows.append({"text": review.text, "label": 0})
        events.append((f"s{k}".encode(), orjson.dumps({"event_id": f"s{k}", "kind": "review", "text": review.text})))
    random.Random(6).shuffle(events)
    names = topics(partitions=2)
    url = sims(1, answer_key=answer_key(rows), time_scale=100.0).urls[0]
    produce(kafka_bootstrap, names["input"], events)
    registry = CollectorRegistry()
    await run_consumer(load_settings(_config(tmp_path, kafka_bootstrap, names, url, policies, prefilters,
                                             "fake-reviews", audit_rate=0.0)), until_idle=3.0, registry=registry)
    labels = labels_of(kafka_bootstrap, names["labels"], len(events))
    assert len(labels) == len(events)
    obfuscated = [labels[e] for e in evil]
    let_through = [lab for lab in obfuscated if lab["decided_by"] == "prefilter"]
    assert not let_through, [(lab["event_id"], lab["prefilter_score"]) for lab in let_through]
    assert all(lab["decided_by"] == "model" and lab["violation"] and lab["prefilter_flags"] for lab in obfuscated)
    # the hole this closes: scored as before the normaliser (NFKC and case folding only), nearly all of
    # them fall below the threshold and would have been labelled "no violation" without a model call
    prefilter = load_prefilter(prefilters / "fake-reviews.prefilter")
    texts = [orjson.loads(v)["text"] for k, v in events if k.decode() in evil]
    before, _ = prefilter.score_normalised([unicodedata.normalize("NFKC", t).casefold() for t in texts])
    assert (before < threshold).mean() > 0.8, (before < threshold).mean()
    plain_scores = prefilter.scores(list(leet.values()))
    assert any(orjson.loads(v)["text"] != leet[k.decode()] for k, v in events if k.decode() in leet)
    for (event_id, _), plain_score in zip(leet.items(), plain_scores.tolist(), strict=True):
        # leetspeak buys nothing: a violation it rewrites is skipped only where its plain spelling is
        # ("1" spells i or l, so the scores are close, not equal)
        assert labels[event_id]["decided_by"] == "model" or plain_score < threshold, (event_id, plain_score)
        assert abs(labels[event_id]["prefilter_score"] - plain_score) < 1.5
    safe = [lab for e, lab in labels.items() if e.startswith("s")]
    assert not any(lab["prefilter_flags"] for lab in safe)  # ordinary text raises no flag...
    assert sum(lab["decided_by"] == "prefilter" for lab in safe) >= 0.8 * len(safe)  # ...and is still skipped
    assert model_requests(url) == sum(lab["decided_by"] == "model" for lab in labels.values())
    flagged = {s.labels["flag"]: s.value for m in registry.collect() if m.name == "safeguard_prefilter_evasion"
               for s in m.samples if s.name.endswith("_total")}
    assert sum(flagged.values()) >= len(evil)
    assert set(flagged) == {"invisible_chars", "mixed_script", "spaced_letters", "styled_letters", "unusual_chars"}
    assert len(labels) == 240 + 40 + 160


def _shift_stream(writer: ReviewWriter) -> tuple[list[tuple[bytes, bytes]], dict[str, int], list[dict]]:
    events, gold, rows = [], {}, []
    for phase, phrasing, n in (("st", "A", 500), ("sh", "B", 500)):
        for k, review in enumerate(writer.batch(n, phrasing, 0.1)):  # type: ignore[arg-type]
            event_id = f"{phase}-{k}"
            events.append((event_id.encode(), orjson.dumps({"event_id": event_id, "kind": "review",
                                                             "text": review.text})))
            gold[event_id] = review.label
            rows.append({"text": review.text, "label": review.label})
    return events, gold, rows


async def test_a_shift_makes_the_controller_send_more_to_the_model_while_recall_holds(
        kafka_bootstrap, topics, sims, answer_key, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streams.cascade")
    writer = ReviewWriter(seed=3)
    history = [Example(r.text, r.label) for r in writer.batch(2500, "A", 0.3)]
    events, gold, rows = _shift_stream(writer)
    runs = {}
    for controller in (True, False):
        base = tmp_path / ("on" if controller else "off")
        base.mkdir()
        policies, prefilters, _ = _setup(base, "fake-reviews", history, 0.95)
        names = topics(partitions=1)  # one partition: the phases arrive in order
        url = sims(1, answer_key=answer_key(rows), time_scale=100.0).urls[0]
        produce(kafka_bootstrap, names["input"], events)
        await run_consumer(load_settings(_config(base, kafka_bootstrap, names, url, policies, prefilters,
                                                 "fake-reviews", controller=controller)), until_idle=3.0)
        runs[controller] = labels_of(kafka_bootstrap, names["labels"], len(events))
        assert len(runs[controller]) == len(events)

    def shifted(labels: dict, what: str) -> float:
        phase = [e for e in gold if e.startswith("sh-")]
        violating = [e for e in phase if gold[e]]
        if what == "sent":
            return sum(labels[e]["decided_by"] == "model" for e in phase) / len(phase)
        return sum(labels[e]["decided_by"] == "model" and labels[e]["violation"] for e in violating) / len(violating)

    on, off = runs[True], runs[False]
    assert "prefilter tightened policy=fake-reviews" in caplog.text
    assert shifted(on, "sent") > shifted(off, "sent")  # the controller raised the share sent to the model
    assert shifted(on, "recall") > shifted(off, "recall")
    assert shifted(on, "recall") >= 0.95, shifted(on, "recall")
    steady = [e for e in gold if e.startswith("st-")]
    # before the shift the two runs decide alike: the controller costs nothing on steady traffic
    assert abs(sum(on[e]["decided_by"] == "model" for e in steady)
               - sum(off[e]["decided_by"] == "model" for e in steady)) <= len(steady) * 0.02
