"""Training: the threshold keeps the hold-out recall, the result is deterministic, too few
violations is an error."""

from __future__ import annotations

import numpy as np
import pytest

from streams.authoring.datasets import load_dataset
from streams.cascade.train import MARGIN, Example, examples_for, held_out, threshold_for, train
from streams.errors import ConfigError, FatalError
from streams.policy.model import STARTER_POLICIES, load_policies

POLICIES = load_policies(STARTER_POLICIES)


def golden(policy_id: str) -> list[Example]:
    return examples_for(policy_id, load_dataset(STARTER_POLICIES / f"{policy_id}.golden.jsonl").items)


def test_the_threshold_is_the_highest_that_keeps_the_target_then_the_margin() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, -1.0, -2.0])
    labels = np.array([1, 1, 1, 1, 1, 0, 0])
    assert threshold_for(scores, labels, 0.8) == 2.0 - MARGIN  # one of five positives may fall below
    assert threshold_for(scores, labels, 0.99) == 1.0 - MARGIN  # none may


def test_training_on_a_golden_set_keeps_hold_out_recall_and_is_deterministic() -> None:
    policy = POLICIES["game-cheating"]
    a = train(policy, golden("game-cheating"), target_recall=0.95)
    b = train(policy, golden("game-cheating"), target_recall=0.95)
    assert a.holdout_recall >= 0.95 and 0 < a.holdout_pass_rate < 1.0
    assert a.prefilter.threshold == b.prefilter.threshold and np.array_equal(a.prefilter.weights, b.prefilter.weights)
    assert a.prefilter.policy_version == policy.version and a.n_train + a.n_holdout == len(golden("game-cheating"))
    held = [e for e in golden("game-cheating") if held_out(e.text, 0.2)]
    sent = a.prefilter.scores([e.text for e in held]) >= a.prefilter.threshold
    assert all(s for s, e in zip(sent, held, strict=True) if e.label == 1)  # every held-out violation is sent


def test_duplicates_land_on_the_same_side_of_the_split() -> None:
    assert held_out("Buy NOW", 0.5) == held_out("buy now", 0.5) == held_out("  buy   now ", 0.5)


def test_too_few_violations_is_an_error_and_nothing_is_made() -> None:
    few = [Example(f"safe text {i}", 0) for i in range(200)] + [Example(f"bad text {i}", 1) for i in range(3)]
    with pytest.raises(FatalError, match="too few positives"):
        train(POLICIES["spam"], few)
    with pytest.raises(ConfigError, match="target-recall"):
        train(POLICIES["spam"], golden("spam"), target_recall=1.0)
