"""The retraining gate: a new prefilter replaces the running one only when it is no worse on fresh
labels; otherwise it is kept aside as <file>.rejected. Small synthetic data, no Kafka."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from streams.cascade import bounds
from streams.cascade.gate import install, judge, rejected_path, split_fresh, standing, unseen
from streams.cascade.model import Prefilter, load_prefilter
from streams.cascade.train import Example, fit
from streams.cli.main import main
from streams.policy.model import STARTER_POLICIES

BAD = ["cheap pills here", "free crypto giveaway", "click this link now", "wire the money today", "hot singles"]
GOOD = ["the weather was", "my garden grows", "a good book about", "the match last night", "dinner plans with"]
BITS = 12


def synthetic(seed: int, n: int, share: float) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bad = rng.random() < share
        tail = rng.choice(BAD) if bad else rng.choice(GOOD)
        out.append(Example(f"{rng.choice(GOOD)} {tail} {i}", int(bad)))
    return out


@pytest.fixture(scope="module")
def base() -> Prefilter:
    data = synthetic(0, 300, 0.3)
    weights, bias = fit([e.text for e in data], [e.label for e in data], bits=BITS, epochs=60)
    return Prefilter("spam", "1-abc", 0.0, weights, bias, bits=BITS)


@pytest.fixture(scope="module")
def fresh() -> list[Example]:
    return synthetic(1, 200, 0.3)


def at(prefilter: Prefilter, threshold: float) -> Prefilter:
    return replace(prefilter, threshold=threshold)


def sending_every_violation(prefilter: Prefilter, fresh: list[Example]) -> Prefilter:
    scores = prefilter.scores([e.text for e in fresh])
    return at(prefilter, float(scores[[e.label == 1 for e in fresh]].min()) - 1e-6)


def test_standing_is_the_bound_and_pass_rate_at_the_files_own_threshold(base, fresh) -> None:
    good = sending_every_violation(base, fresh)
    mine = standing(good, fresh)
    positives = sum(e.label for e in fresh)
    assert mine.positives == positives and mine.recall == 1.0
    assert mine.recall_lower_bound == pytest.approx(bounds.lower(positives, positives))
    assert positives / len(fresh) <= mine.pass_rate < 1.0
    assert standing(at(base, 1e9), fresh).pass_rate == 0.0 and standing(at(base, 1e9), fresh).recall_lower_bound == 0


def test_a_no_worse_prefilter_replaces_the_running_one(base, fresh) -> None:
    good = sending_every_violation(base, fresh)
    everything = at(base, -1e9)
    decision = judge(good, everything, fresh, target_recall=0.99)
    assert decision.replaced and decision.fresh_examples == len(fresh)
    assert decision.old is not None and decision.old.pass_rate == 1.0 and decision.new.pass_rate < 1.0
    assert judge(good, good, fresh, target_recall=0.99).replaced  # the same file again: no worse


def test_lower_recall_than_the_running_one_is_kept_aside(base, fresh) -> None:
    good = sending_every_violation(base, fresh)
    blind = at(base, 1e9)  # sends nothing: no recall, a pass rate nobody could beat
    decision = judge(blind, good, fresh, target_recall=0.9)
    assert not decision.replaced and "recall lower bound" in decision.reason


def test_a_bound_that_meets_the_target_is_enough_even_below_the_running_one(base, fresh) -> None:
    good = sending_every_violation(base, fresh)
    scores = np.sort(base.scores([e.text for e in fresh if e.label == 1]))
    one_miss = at(base, float(scores[1]) - 1e-6)  # lets one violation through, sends less
    decision = judge(one_miss, good, fresh, target_recall=0.8)
    assert decision.old is not None and decision.new.recall_lower_bound < decision.old.recall_lower_bound
    assert decision.new.recall_lower_bound >= 0.8 and decision.replaced
    assert not judge(one_miss, good, fresh, target_recall=0.99).replaced


def test_a_higher_pass_rate_than_the_running_one_plus_slack_is_kept_aside(base, fresh) -> None:
    good = sending_every_violation(base, fresh)
    everything = at(base, -1e9)
    decision = judge(everything, good, fresh, target_recall=0.9)
    assert not decision.replaced and "pass rate" in decision.reason
    assert decision.new.pass_rate > decision.old.pass_rate + 0.02  # type: ignore[union-attr]


def test_too_few_fresh_violations_to_judge_keeps_the_running_one(base, fresh) -> None:
    few = [e for e in fresh if not e.label] + [e for e in fresh if e.label][:3]
    good = sending_every_violation(base, fresh)
    decision = judge(good, good, few, target_recall=0.9)
    assert not decision.replaced and "too few fresh violations" in decision.reason


def test_nothing_running_or_a_file_for_another_policy_version_is_replaced(base, fresh) -> None:
    assert judge(base, None, fresh, target_recall=0.99).replaced
    stale = replace(base, policy_version="0-old")
    decision = judge(base, stale, fresh, target_recall=0.99)
    assert decision.replaced and "0-old" in decision.reason and decision.old is None


def test_install_replaces_atomically_or_writes_beside_with_a_log_line(base, fresh, tmp_path: Path, caplog) -> None:
    path = tmp_path / "spam.prefilter"
    good = sending_every_violation(base, fresh)
    assert install(good, path, judge(good, None, fresh, target_recall=0.9)) == path
    assert load_prefilter(path).threshold == good.threshold and not list(tmp_path.glob("*.tmp"))
    blind = at(base, 1e9)
    with caplog.at_level(logging.WARNING, logger="streams.cascade.gate"):
        written = install(blind, path, judge(blind, good, fresh, target_recall=0.9))
    assert written == rejected_path(path) == tmp_path / "spam.prefilter.rejected"
    assert load_prefilter(path).threshold == good.threshold  # the running file is untouched
    assert load_prefilter(written).threshold == blind.threshold
    line = caplog.records[-1].getMessage()
    assert "prefilter kept aside" in line and "new_recall_lower_bound=0.0000" in line
    assert "old_recall_lower_bound=" in line and "old_pass_rate=" in line and "reason=recall lower bound" in line


def test_the_fresh_sample_is_the_newest_share_and_stays_out_of_training() -> None:
    history = [Example(f"text {i}", i % 2) for i in range(10)]
    older, newest = split_fresh(history, 0.2)
    assert older == history[:8] and newest == history[8:]
    assert split_fresh(history, 0.25)[1] == history[7:]  # rounded up: never an empty sample from some history
    assert unseen([Example("TEXT 9", 1), Example("text 1", 1)], newest) == [Example("text 1", 1)]


def test_the_cli_gate_replaces_then_keeps_aside_with_exit_0(tmp_path: Path, monkeypatch, capsys) -> None:
    history = synthetic(2, 320, 0.3)
    # the newest 20% hold three violations: too few to judge, once there is a running file
    history += [Example(f"{GOOD[i % 5]} fresh {i}", 0) for i in range(77)]
    history += [Example(f"{BAD[0]} fresh {i}", 1) for i in range(3)]
    monkeypatch.setattr("streams.cascade.history.examples_from_labels", lambda settings, policy, limit: history)
    monkeypatch.setattr("streams.config.load_settings",
                        lambda path: SimpleNamespace(kafka=SimpleNamespace(labels_topic="labels")))
    path = tmp_path / "spam.prefilter"
    argv = ["prefilter", "train", "--policy", str(STARTER_POLICIES / "spam.md"), "--from-labels", "--config",
            str(tmp_path / "c.yaml"), "--target-recall", "0.9", "--certify-available", "--replace", str(path), "--json"]
    assert main(argv) == 0
    doc = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["out"] == str(path) and path.exists()
    assert doc["gate"]["replaced"] and doc["gate"]["old"] is None and doc["gate"]["fresh_examples"] == 80
    assert doc["n_train"] + doc["n_holdout"] == 320  # the fresh part was not trained on
    assert main(argv) == 0
    doc = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not doc["gate"]["replaced"] and "too few fresh violations" in doc["gate"]["reason"]
    assert doc["out"] == str(rejected_path(path)) and rejected_path(path).exists()
    assert set(doc["gate"]) == {"replaced", "reason", "new", "old", "fresh_examples"}
    assert main(["prefilter", "train", "--policy", str(STARTER_POLICIES / "spam.md"), "--dataset",
                 str(STARTER_POLICIES / "spam.golden.jsonl"), "--replace", str(path)]) == 2  # needs --from-labels


def test_the_fresh_sample_leaves_out_what_the_running_prefilter_learned() -> None:
    from streams.cascade.gate import after

    fresh = [Example(f"t{i}", i % 2, f"2026-12-0{i}T00:00:00.000Z") for i in range(1, 8)]
    running = Prefilter("p", "1", 0.0, np.zeros(2**BITS, dtype=np.float32), 0.0,
                        {"history_until": "2026-12-04T00:00:00.000Z"}, bits=BITS)
    assert [e.text for e in after(fresh, running)] == ["t5", "t6", "t7"]
    assert after(fresh, None) == fresh  # nothing running: every fresh label counts
    legacy = Prefilter("p", "1", 0.0, np.zeros(2**BITS, dtype=np.float32), 0.0, {}, bits=BITS)
    assert after(fresh, legacy) == fresh  # a file without the stamp: all of them


def test_training_stamps_the_newest_label_it_learned_from() -> None:
    from streams.cascade.train import train
    from streams.policy.model import load_policy

    rng = np.random.default_rng(0)
    examples = [Example(f"{'buy cheap pills now' if y else 'lovely walk today'} {i} {rng.integers(1e9)}", y,
                        f"2026-11-{10 + i % 20:02d}T00:00:00.000Z") for i, y in enumerate([1, 0] * 200)]
    trained = train(load_policy(STARTER_POLICIES / "spam.md"), examples, target_recall=0.9, certify_available=True)
    assert trained.prefilter.training["history_until"] == "2026-11-29T00:00:00.000Z"
