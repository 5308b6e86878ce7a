"""Training: the threshold certifies hold-out recall at 95% confidence, the result is
deterministic, too few violations is an error that says how many are needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from streams.authoring.datasets import load_dataset
from streams.cascade import bounds
from streams.cascade.model import featurize, load_prefilter
from streams.cascade.train import (
    Example,
    certify,
    coverage,
    examples_for,
    held_out,
    threshold_for,
    train,
)
from streams.cli.main import main
from streams.errors import ConfigError, FatalError
from streams.policy.model import STARTER_POLICIES, load_policies

POLICIES = load_policies(STARTER_POLICIES)
JSON_KEYS = {"policy_id", "policy_version", "n_train", "n_holdout", "positives", "threshold", "holdout_recall",
             "holdout_pass_rate", "out", "recall_lower_bound", "holdout_positives", "holdout_positives_effective",
             "target_recall", "target_met", "confidence"}


def golden(policy_id: str) -> list[Example]:
    return examples_for(policy_id, load_dataset(STARTER_POLICIES / f"{policy_id}.golden.jsonl").items)


def test_the_threshold_sits_halfway_below_the_lowest_positive_that_must_be_sent() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, -1.0, -2.0])
    labels = np.array([1, 1, 1, 1, 1, 0, 0])
    assert threshold_for(scores, labels, 1) == 1.5  # the positive at 1.0 may fall below; 2.0 must be sent
    assert threshold_for(scores, labels, 0) == 0.0  # every positive sent: halfway to the safe item at -1
    assert threshold_for(np.array([2.0, 1.0]), np.array([1, 1]), 0) == 1.0 - 1e-6  # nothing below


@pytest.mark.parametrize("seed", range(4))
def test_the_bound_is_met_by_construction_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(60):
        n_pos, n_neg = int(rng.integers(1, 600)), int(rng.integers(0, 600))
        target = float(rng.choice([0.5, 0.7, 0.8, 0.9, 0.95, 0.99]))
        scores = np.concatenate([rng.normal(2, 2, n_pos), rng.normal(-2, 2, n_neg)])
        if rng.random() < 0.3:
            scores = np.round(scores)  # ties, between positives and across the classes
        labels = np.concatenate([np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)])
        cert = certify(scores, labels, target)
        misses = bounds.max_misses(n_pos, target)
        if misses is None:
            assert cert is None
            continue
        assert cert is not None and cert.target_met
        sent = scores >= cert.threshold
        found = int(sent[labels == 1].sum())
        assert found == cert.sent_positives and bounds.lower(found, n_pos) >= target
        lowest_sent = np.sort(scores[labels == 1])[misses]
        assert cert.threshold <= lowest_sent  # never above the lowest positive that must be sent
        assert not np.any((scores < lowest_sent) & sent)  # the highest such threshold: nothing below it is sent


def test_too_few_positives_to_certify_always_sends_every_one_when_asked() -> None:
    rng = np.random.default_rng(7)
    scores = np.concatenate([rng.normal(1, 1, 20), rng.normal(-1, 1, 50)])
    labels = np.concatenate([np.ones(20, dtype=int), np.zeros(50, dtype=int)])
    assert certify(scores, labels, 0.99) is None
    cert = certify(scores, labels, 0.99, certify_available=True)
    assert cert is not None and not cert.target_met and cert.sent_positives == 20
    assert cert.recall_lower_bound == pytest.approx(bounds.lower(20, 20))


def test_coverage_is_the_share_of_each_texts_ngrams_with_a_trained_weight() -> None:
    features = featurize(["abcdef", "xyz", ""], 8)
    weights = np.zeros(2**8, dtype=np.float32)
    first = features.bucket[features.row == 0]
    weights[first] = 1.0
    cov = coverage(features, weights)
    assert cov[0] == 1.0 and 0.0 <= cov[1] <= 1.0 and cov[2] == 0.0
    weights[:] = 0
    assert not coverage(features, weights).any()


def test_training_on_a_golden_set_certifies_what_it_can_and_is_deterministic() -> None:
    policy = POLICIES["game-cheating"]
    examples = golden("game-cheating")
    a = train(policy, examples, target_recall=0.7)
    b = train(policy, examples, target_recall=0.7)
    assert a.certificate.target_met and a.certificate.recall_lower_bound >= 0.7 and 0 < a.holdout_pass_rate < 1.0
    assert a.prefilter.threshold == b.prefilter.threshold and np.array_equal(a.prefilter.weights, b.prefilter.weights)
    assert a.prefilter.policy_version == policy.version and a.n_train + a.n_holdout == len(examples)
    held = [e for e in examples if held_out(e.text, 0.2)]
    sent = a.prefilter.scores([e.text for e in held]) >= a.prefilter.threshold
    found = sum(1 for s, e in zip(sent, held, strict=True) if s and e.label == 1)
    assert bounds.lower(found, a.certificate.holdout_positives) >= 0.7
    stamp = a.prefilter.training
    assert stamp["recall_lower_bound"] == round(a.certificate.recall_lower_bound, 4) and stamp["target_met"] is True
    assert stamp["holdout_positives"] == sum(e.label for e in held) and stamp["confidence"] == 0.95
    assert 0.0 < stamp["coverage_p05"] <= 1.0 and stamp["target_recall"] == 0.7


def test_duplicates_land_on_the_same_side_of_the_split() -> None:
    assert held_out("Buy NOW", 0.5) == held_out("buy now", 0.5) == held_out("  buy   now ", 0.5)


def test_too_few_violations_is_an_error_and_nothing_is_made() -> None:
    few = [Example(f"safe text {i}", 0) for i in range(200)] + [Example(f"bad text {i}", 1) for i in range(3)]
    with pytest.raises(FatalError, match="too few positives"):
        train(POLICIES["spam"], few)
    with pytest.raises(ConfigError, match="target-recall"):
        train(POLICIES["spam"], golden("spam"), target_recall=1.0)


def test_too_few_hold_out_positives_to_certify_names_the_number_needed() -> None:
    needed = bounds.positives_needed(0.99)
    with pytest.raises(FatalError, match=rf"{needed} needed.*about {needed * 5} labelled violations"):
        train(POLICIES["spam"], golden("spam"), target_recall=0.99)
    best = train(POLICIES["spam"], golden("spam"), target_recall=0.99, certify_available=True)
    cert = best.certificate
    assert not cert.target_met and best.holdout_recall == 1.0
    assert cert.recall_lower_bound == pytest.approx(bounds.lower(cert.holdout_positives, cert.holdout_positives))
    assert best.prefilter.training["target_met"] is False


def test_the_cli_reports_the_certificate_and_refuses_an_uncertifiable_target(tmp_path: Path, capsys) -> None:
    policy, dataset = str(STARTER_POLICIES / "fake-reviews.md"), str(STARTER_POLICIES / "fake-reviews.golden.jsonl")
    out = tmp_path / "fr.prefilter"
    assert main(["prefilter", "train", "--policy", policy, "--dataset", dataset, "--out", str(out)]) == 1
    assert "299 needed" in capsys.readouterr().err and not out.exists()
    assert main(["prefilter", "train", "--policy", policy, "--dataset", dataset, "--out", str(out),
                 "--target-recall", "0.9", "--certify-available", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(doc) == JSON_KEYS and doc["target_met"] is False and doc["confidence"] == 0.95
    assert doc["recall_lower_bound"] == round(bounds.lower(doc["holdout_positives"], doc["holdout_positives"]), 4)
    assert load_prefilter(out).training["recall_lower_bound"] == doc["recall_lower_bound"]
    assert main(["prefilter", "eval", "--model", str(out), "--dataset", dataset, "--json"]) == 0
    ev = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    found = ev["positives"] - ev["skipped_violations"]
    assert ev["recall_lower_bound"] == round(bounds.lower(found, ev["positives"]), 4) and "recall" in ev


def test_a_history_behind_a_cascade_is_weighted_by_what_each_audit_stands_for() -> None:
    """Behind a cascade the history holds every sent pair but only the audited 2% of skipped ones.
    Counted once each, the few audited misses vanish among the sent violations and the bound
    certifies recall the stream never had; weighted by 1 / audit_rate, they count as the misses
    they stand for."""
    rng = np.random.default_rng(5)
    sent = rng.uniform(1.0, 6.0, 9500)  # violations the prefilter sent (found)
    audited_misses = rng.uniform(-6.0, -1.0, 10)  # 2% of the 500 it skipped: found only by the audit
    scores = np.concatenate([sent, audited_misses])
    labels = np.ones(len(scores), dtype=int)
    weights = np.concatenate([np.ones(len(sent)), np.full(len(audited_misses), 1 / 0.02)])
    unweighted = certify(scores, labels, 0.99, certify_available=True)
    weighted = certify(scores, labels, 0.99, weights=weights, certify_available=True)
    assert unweighted is not None and weighted is not None
    # counted once each, 10 misses among 9,510 violations certify 0.99 above every miss: all skipped
    assert unweighted.target_met and unweighted.threshold > float(audited_misses.max())
    # weighted, skipping them all is 0.95 recall: at most one may be skipped, every other one is sent
    assert weighted.target_met and weighted.threshold <= float(np.sort(audited_misses)[1])
    assert bounds.weighted_lower(9500, 10000, 9500 + 10 * 50**2) < 0.95
    assert weighted.effective_positives < len(scores)


def test_unit_weights_give_the_exact_bound() -> None:
    scores = np.linspace(-3, 3, 400)
    labels = (np.arange(400) % 2).astype(int)
    a = certify(scores, labels, 0.95)
    b = certify(scores, labels, 0.95, weights=np.ones(400))
    assert a == b and a is not None
    assert bounds.weighted_lower(180, 200, 200) == pytest.approx(bounds.lower(180, 200))


def test_an_uncertified_threshold_keeps_a_margin_below_the_lowest_violation() -> None:
    """Ten held-out violations cannot certify 0.99: every one is sent, and with nothing known of the
    tail below them the threshold sits a margin under the lowest; a certified one needs no margin."""
    from streams.cascade.train import UNCERTIFIED_MARGIN

    scores = np.concatenate([np.linspace(1.0, 3.0, 10), np.linspace(-4.0, 0.5, 30)])
    labels = np.concatenate([np.ones(10, dtype=int), np.zeros(30, dtype=int)])
    cert = certify(scores, labels, 0.99, certify_available=True)
    assert cert is not None and not cert.target_met
    assert cert.threshold == pytest.approx(1.0 - UNCERTIFIED_MARGIN)
    many = np.concatenate([np.linspace(1.0, 3.0, 400), np.linspace(-4.0, 0.5, 400)])
    certified = certify(many, np.repeat([1, 0], 400), 0.99)
    assert certified is not None and certified.target_met and certified.threshold > 1.0 - UNCERTIFIED_MARGIN
