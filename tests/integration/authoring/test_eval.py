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


# ---- the published layouts, several policies, combined mode ----------------------------------

TEXTS = [f"Sample text number {i}, with a comma, for the evaluation" + ("\nand a second line" if i % 5 == 0 else "")
         for i in range(16)]
GOLD = [1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0]
ANSWER = [1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]  # what the simulator will say


def confusion(gold: list[int], said: list[int]) -> tuple[int, int, int, int]:
    pairs = list(zip(gold, said, strict=True))
    return (pairs.count((1, 1)), pairs.count((0, 1)), pairs.count((0, 0)), pairs.count((1, 0)))


def eval_json(url: str, dataset, *extra: str, policies: tuple = (POLICY,)) -> dict:
    args = [a for p in policies for a in ("--policy", str(p))]
    proc = safeguard("eval", *args, "--dataset", str(dataset), "--replica", url, "--json", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_each_published_layout_gives_exact_confusion_counts(sims, answer_key, tmp_path) -> None:
    import csv
    import gzip

    url = sims(1, answer_key=answer_key([{"text": t, "label": a} for t, a in zip(TEXTS, ANSWER, strict=True)])).urls[0]
    tp, fp, tn, fn = confusion(GOLD, ANSWER)

    plain = tmp_path / "set.csv"
    with plain.open("w", newline="", encoding="utf-8-sig") as fh:  # Excel's BOM, quoted commas and newlines
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(TEXTS, GOLD, strict=True))
    toxic = tmp_path / "toxicchat0124_test.csv"
    with toxic.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["conv_id", "user_input", "model_output", "human_annotation", "toxicity", "jailbreaking",
                    "openai_moderation"])
        for i, (t, g) in enumerate(zip(TEXTS, GOLD, strict=True)):
            w.writerow([f"c{i:04x}", t, "a reply, unused", "True", g, 0, '[["sexual", 0.0001], ["violence", 0.02]]'])
    masked = {3, 8, 11}  # lines without the SH key: unknown, never a negative
    moderation = tmp_path / "samples-1680.jsonl.gz"
    rows = [{"prompt": t, "S": 0, "H": 0, "V": 0, "HR": 0, **({} if i in masked else {"SH": g}), "S3": 0, "H2": 0,
             "V2": 0} for i, (t, g) in enumerate(zip(TEXTS, GOLD, strict=True))]
    moderation.write_bytes(gzip.compress(b"\n".join(orjson.dumps(r) for r in rows) + b"\n"))

    for dataset, extra, fmt in ((plain, (), "csv"), (toxic, (), "toxicchat"), (moderation, ("--category", "SH"),
                                                                                "openai-moderation")):
        doc = eval_json(url, dataset, *extra)
        assert doc["format"] == fmt, doc
        if fmt == "openai-moderation":
            kept = [i for i in range(len(TEXTS)) if i not in masked]
            counts = confusion([GOLD[i] for i in kept], [ANSWER[i] for i in kept])
            assert (doc["tp"], doc["fp"], doc["tn"], doc["fn"]) == counts and doc["skipped"] == len(masked)
            assert doc["n"] == len(kept)
        else:
            assert (doc["tp"], doc["fp"], doc["tn"], doc["fn"]) == (tp, fp, tn, fn), (fmt, doc)
            assert doc["n"] == len(TEXTS) and doc["skipped"] == 0 and doc["errors"] == 0


def test_two_policies_give_exact_per_policy_figures_and_multi_policy_accuracy(sims, answer_key, tmp_path) -> None:
    spam = ROOT / "policies/spam.md"
    gold_spam = [1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    said_spam = [1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    dataset = tmp_path / "two.jsonl"
    unlabelled_spam = 14  # the last-but-one item has no spam label: skipped for spam, and out of multi-policy
    dataset.write_bytes(b"\n".join(orjson.dumps({"text": t, "labels": {"fake-reviews": g, **(
        {} if i == unlabelled_spam else {"spam": s})}}) for i, (t, g, s) in enumerate(zip(TEXTS, GOLD, gold_spam,
                                                                                           strict=True))))
    key = [{"text": t, "label": a, "policy": "fake-reviews"} for t, a in zip(TEXTS, ANSWER, strict=True)]
    key += [{"text": t, "label": a, "policy": "spam"} for t, a in zip(TEXTS, said_spam, strict=True)]
    url = sims(1, answer_key=answer_key(key)).urls[0]

    keep = [i for i in range(len(TEXTS)) if i != unlabelled_spam]
    both_right = sum(1 for i in keep if GOLD[i] == ANSWER[i] and gold_spam[i] == said_spam[i])
    fake = confusion(GOLD, ANSWER)
    spam_counts = confusion([gold_spam[i] for i in keep], [said_spam[i] for i in keep])
    out = tmp_path / "results.jsonl"
    for mode in ("separate", "combined"):
        doc = eval_json(url, dataset, "--mode", mode, "--out", str(out), policies=(POLICY, spam))
        per = doc["per_policy"]
        assert doc["mode"] == mode and set(per) == {"fake-reviews", "spam"}
        assert tuple(per["fake-reviews"][k] for k in ("tp", "fp", "tn", "fn")) == fake
        assert tuple(per["spam"][k] for k in ("tp", "fp", "tn", "fn")) == spam_counts
        assert per["spam"]["skipped"] == 1 and doc["skipped"] == 1 and doc["n"] == len(TEXTS) * 2 - 1
        assert doc["multi_policy_accuracy"] == round(both_right / len(keep), 4) and doc["multi_policy_items"] == 15
        results = [orjson.loads(line) for line in out.read_text().splitlines()]
        assert len(results) == 31 and all(r["reasoning"] for r in results)  # every verdict with its reasoning


def test_a_malformed_dataset_names_file_and_line_and_writes_nothing(sims, tmp_path) -> None:
    url = sims(1).urls[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 0}\n{"text": "broken", "label": "maybe"}\n')
    out = tmp_path / "results.jsonl"
    proc = safeguard("eval", "--policy", str(POLICY), "--dataset", str(bad), "--replica", url, "--out", str(out))
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr and "'label' must be 0 or 1" in proc.stderr
    assert not out.exists() and list(tmp_path.glob(".results.jsonl*")) == []
    moderation = tmp_path / "mod.jsonl"
    moderation.write_text('{"prompt": "x", "SH": 0}\n')
    proc = safeguard("eval", "--policy", str(POLICY), "--dataset", str(moderation), "--replica", url)
    assert proc.returncode == 2 and "--category" in proc.stderr
