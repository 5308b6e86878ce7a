"""``safeguard eval`` against the simulator over HTTP."""

from __future__ import annotations

import json

import orjson

from tests.integration.helpers import ROOT, safeguard

POLICY = ROOT / "policies/fake-reviews.md"
GOLDEN = ROOT / "policies/fake-reviews.golden.jsonl"


def golden() -> list[dict]:
    return [orjson.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]


def run_eval(url: str, *extra: str) -> dict:
    proc = safeguard("eval", "--policy", str(POLICY), "--dataset", str(GOLDEN), "--replica", url, "--json", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_golden_set_as_answer_key_scores_perfectly(sims) -> None:
    url = sims(1, answer_key=GOLDEN).urls[0]
    doc = run_eval(url)
    rows = golden()
    assert doc["n"] == len(rows) and doc["errors"] == 0
    assert doc["tp"] == sum(r["label"] for r in rows) and doc["fp"] == 0 and doc["fn"] == 0
    assert doc["precision"] == doc["recall"] == doc["f1"] == doc["accuracy"] == 1.0


def test_known_flips_give_exact_confusion_counts(sims, answer_key, tmp_path) -> None:
    rows = golden()
    positives = [i for i, r in enumerate(rows) if r["label"] == 1]
    negatives = [i for i, r in enumerate(rows) if r["label"] == 0]
    flip = set(positives[:5]) | set(negatives[:3])
    flipped = [{**r, "label": 1 - r["label"]} if i in flip else r for i, r in enumerate(rows)]
    url = sims(1, answer_key=answer_key(flipped)).urls[0]
    out = tmp_path / "items.jsonl"
    doc = run_eval(url, "--out", str(out))
    p, n = len(positives), len(negatives)
    assert (doc["tp"], doc["fn"], doc["fp"], doc["tn"]) == (p - 5, 5, 3, n - 3)
    assert doc["precision"] == round((p - 5) / (p - 5 + 3), 4)
    assert doc["recall"] == round((p - 5) / p, 4)
    lines = [orjson.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(rows) and all(x["rationale"] for x in lines)


def test_compare_two_versions_lists_changed_items(sims, answer_key, tmp_path) -> None:
    # Version 2 of the policy gets different answers: the key scopes entries to the policy's first line.
    v2 = tmp_path / "fake-reviews.md"
    v2.write_text(POLICY.read_text().replace("version: 1", "version: 2").replace(
        "(policy fake-reviews)", "(policy fake-reviews-v2)"))
    rows = golden()
    changed_text = rows[0]["text"]
    key = [{**r, "policy": "fake-reviews"} for r in rows] + [
        {**r, "policy": "fake-reviews-v2", "label": 1 - r["label"] if r["text"] == changed_text else r["label"]}
        for r in rows]
    url = sims(1, answer_key=answer_key(key)).urls[0]
    doc = run_eval(url, "--compare", str(v2))
    assert doc["f1"] == 1.0 and doc["compare"]["policy_version"].startswith("2-")
    assert [c["text"] for c in doc["changed"]] == [changed_text]


def test_unreachable_replica_counts_errors_not_negatives(tmp_path) -> None:
    from streams.devtools.broker import free_port

    proc = safeguard("eval", "--policy", str(POLICY), "--dataset", str(GOLDEN),
                     "--replica", f"http://127.0.0.1:{free_port()}/v1", "--json", timeout=120)
    assert proc.returncode == 1
    assert "every item failed" in proc.stderr
