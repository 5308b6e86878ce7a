"""The live recall controller: bounds that hold, tightening on misses, loosening only on evidence."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from streams.cascade import bounds
from streams.cascade.control import DRIFT_WINDOW, STEP, RecallControl


def control(**kw: object) -> RecallControl:
    return RecallControl("p", 0.0, 0.99, **kw)  # type: ignore[arg-type]


def steady(c: RecallControl, n: int, rng: random.Random, *, audit: float = 0.02, violation_share: float = 0.1,
           missed_share: float = 0.0, miss_score: float = -1.1) -> None:
    """``n`` pairs: violations score above the threshold (found) unless ``missed_share`` of them score
    ``miss_score`` (below it); safe pairs score below it; below-threshold pairs are audited at ``audit``."""
    for _ in range(n):
        if rng.random() < violation_share:
            if rng.random() < missed_share:
                score, violation = miss_score, True
            else:
                score, violation = rng.uniform(0.5, 6), True
        else:
            score, violation = rng.uniform(-8, -0.5), False
        if score >= c.threshold:
            c.outcome(score, "sent", violation)
        elif rng.random() < audit:
            c.outcome(score, "audited", violation)
        else:
            c.outcome(score, "skipped", False)


def test_no_evidence_keeps_the_trained_threshold_and_a_low_bound() -> None:
    c = control()
    assert c.evaluate(force=True) is None  # nothing observed: nothing to evaluate
    steady(c, 200, random.Random(1))
    assert c.evaluate(force=True) is None
    assert c.threshold == 0.0
    assert c.last is not None and c.last.lower < 0.99  # thin evidence certifies nothing...
    assert c.last.upper == 1.0  # ...and shows no miss


def test_misses_tighten_below_the_lowest_missed_score() -> None:
    c = control()
    rng = random.Random(2)
    steady(c, 2000, rng)
    assert c.evaluate(force=True) is None
    for _ in range(3):  # three audited violations scoring -1.1 and -2.3
        c.outcome(-1.1, "audited", True)
    c.outcome(-2.3, "audited", True)
    change = c.evaluate(force=True)
    assert change is not None and change.new < change.old == 0.0
    assert c.threshold <= -2.3 < c.threshold + STEP  # the lower edge of the lowest miss's bin
    assert change.bounds.upper < 0.99
    assert c.tightened_by == pytest.approx(-c.threshold)
    # misses like those are now sent: the bound at the new threshold no longer shows a shortfall
    assert c.last is not None and c.last.upper >= 0.99


def test_one_miss_among_plenty_of_found_violations_does_not_tighten() -> None:
    c = control()
    steady(c, 40_000, random.Random(3))
    c.outcome(-1.0, "audited", True)
    assert c.evaluate(force=True) is None  # consistent with 99% recall on this much evidence
    assert c.threshold == 0.0


def test_it_never_loosens_without_evidence_and_never_above_the_trained_threshold() -> None:
    c = control(window=1_000_000)
    rng = random.Random(4)
    steady(c, 1000, rng)
    for _ in range(3):
        c.outcome(-3.0, "audited", True)
    assert c.evaluate(force=True) is not None
    tight = c.threshold
    steady(c, 2000, rng)  # clean traffic, but far too little to certify 0.99
    assert c.evaluate(force=True) is None and c.threshold == tight
    # plenty of clean evidence at a high audit rate: the lower bound certifies the trained threshold
    steady(c, 60_000, rng, audit=0.3)
    change = c.evaluate(force=True)
    assert change is not None and change.new > tight
    assert c.threshold <= 0.0
    assert c.bounds_at(c.threshold).lower >= 0.99


def test_disabled_controller_measures_but_never_moves() -> None:
    c = control(enabled=False)
    steady(c, 500, random.Random(5))
    for _ in range(5):
        c.outcome(-1.0, "audited", True)
    assert c.evaluate(force=True) is None
    assert c.threshold == 0.0
    assert c.last is not None and c.last.upper < 0.99


def test_repeated_misses_can_send_everything() -> None:
    c = control()
    for score in (-5.0, -12.0, -30.0, -45.0):
        c.outcome(score, "audited", True)
        c.evaluate(force=True)
    assert c.threshold == -math.inf
    assert c.tightened_by == math.inf


def test_evidence_slides_out_of_the_window() -> None:
    c = control(window=4000)
    c.outcome(-1.0, "audited", True)
    steady(c, 5000, random.Random(6))
    c.evaluate(force=True)
    assert c.last is not None and c.last.audit_misses == 0 and c.last.observed_missed == 0


def test_flagged_pairs_count_as_found_whatever_their_score() -> None:
    c = control()
    for _ in range(50):
        c.outcome(-9.0, "flagged", True)
    c.evaluate(force=True)
    assert c.last is not None and c.last.found == 50 and c.last.observed_missed == 0


@pytest.mark.parametrize("true_recall", [0.95, 0.99])
def test_the_bounds_cover_the_true_recall_at_their_confidence(true_recall: float) -> None:
    """Over many simulated windows, the true recall lies below the lower bound in at most about
    5% of them (and above the upper bound as rarely)."""
    below = above = 0
    runs = 200
    for seed in range(runs):
        rng = random.Random(seed)
        c = control(window=10**7, enabled=False)  # measure only: a tightening would move the threshold
        found = missed = 0
        for _ in range(20_000):
            if rng.random() < 0.1:
                if rng.random() < true_recall:
                    c.outcome(2.0, "sent", True)
                    found += 1
                    continue
                missed += 1
                audited = rng.random() < 0.05
                c.outcome(-1.0, "audited" if audited else "skipped", audited)
            else:
                c.outcome(-3.0, "audited" if rng.random() < 0.05 else "skipped", False)
        c.evaluate(force=True)
        assert c.last is not None
        actual = found / (found + missed)
        below += actual < c.last.lower
        above += actual > c.last.upper
    assert below <= 0.08 * runs and above <= 0.08 * runs


def test_drift_is_a_test_on_the_novel_share_that_reacts_within_a_few_dozen_texts() -> None:
    c = control(coverage_p05=0.5)
    assert not c.novel(0.6) and c.novel(0.4)
    rng = np.random.default_rng(7)
    steady_state = c.scored(rng.random(20_000) < 0.05)  # steady traffic: 5% novel, as in the training hold-out
    assert steady_state.sum() < 200 and c.drift < 0.05  # rare false alarms (each only audits novel texts more)
    shifted = c.scored(rng.random(DRIFT_WINDOW) < 0.5)  # a new phrasing arrives: half the texts are novel
    assert shifted.any() and int(np.argmax(shifted)) <= 40  # detected within a few dozen texts
    assert c.drifting and c.drift > 0.3
    calm = c.scored(np.zeros(DRIFT_WINDOW, dtype=bool))
    assert not calm[-1] and not c.drifting and c.drift == 0.0  # it lasts only while the novel texts do


def test_the_batched_drift_test_is_the_one_pair_at_a_time_test() -> None:
    flags = np.random.default_rng(3).random(3000) < 0.12
    whole, one_by_one = control(coverage_p05=0.5), control(coverage_p05=0.5)
    at_once = whole.scored(flags)
    split = np.concatenate([one_by_one.scored(flags[i: i + 37]) for i in range(0, len(flags), 37)])
    assert (at_once == split).all() and whole.drift == one_by_one.drift


def test_skipped_pairs_are_counted_in_their_bins() -> None:
    c = control(window=10**7, enabled=False)
    c.skipped(np.array([-2.0, -2.0, -30.0, float("nan")]), np.array([False, True, False, False]))
    for _ in range(10):
        c.outcome(1.0, "sent", True)
    c.evaluate(force=True)
    assert c.last is not None and c.last.unaudited_skipped == 4 and c.last.found == 10


def test_a_shortfall_among_novel_texts_tightens_even_when_familiar_evidence_would_hide_it() -> None:
    c = control()
    steady(c, 30_000, random.Random(8))  # 3,000 familiar violations found
    for _ in range(10):
        c.outcome(3.0, "sent", True, novel=True)
    c.outcome(-1.2, "audited", True, novel=True)
    c.outcome(-1.7, "audited", True, novel=True)
    assert c.bounds_at(0.0).upper >= 0.99  # over all pairs, two misses are within 99% recall...
    change = c.evaluate(force=True)
    assert change is not None and change.texts == "novel"  # ...over novel texts they are not
    assert c.novel_threshold == -math.inf and c.threshold_for(novel=True) == -math.inf  # novel texts: the model
    assert c.threshold == 0.0 == c.threshold_for(novel=False)  # familiar traffic keeps its threshold
    assert c.tightened_by == math.inf


def test_novel_texts_return_to_the_prefilter_only_on_evidence_of_their_own() -> None:
    c = control(window=10**7)
    c.outcome(-1.0, "audited", True, novel=True)
    c.outcome(2.0, "sent", True, novel=True)
    assert c.evaluate(force=True) is not None and c.novel_threshold == -math.inf
    rng = random.Random(9)
    for _ in range(200):  # every novel text now goes to the model: their violations all score high
        c.outcome(rng.uniform(0.5, 5), "sent", True, novel=True)
        for _ in range(9):
            c.outcome(rng.uniform(-8, -0.5), "sent", False, novel=True)
    c.evaluate(force=True)
    assert c.novel_threshold == -math.inf  # 200 violations found cannot certify 0.99 (299 needed)
    for _ in range(400):
        c.outcome(rng.uniform(0.5, 5), "sent", True, novel=True)
    change = c.evaluate(force=True)
    assert change is not None and change.texts == "novel" and c.novel_threshold > -math.inf
    assert c.novel_threshold <= c.threshold
    assert c.bounds_at(c.threshold, novel_threshold=c.novel_threshold).lower >= 0.99


def test_familiar_tightening_pulls_the_novel_threshold_down_with_it() -> None:
    c = control()
    for _ in range(3):
        c.outcome(-2.0, "audited", True)
    change = c.evaluate(force=True)
    assert change is not None and change.texts == "familiar"
    assert c.novel_threshold <= c.threshold <= -2.0


def test_no_coverage_reference_means_no_drift() -> None:
    c = control()
    c.scored(np.ones(DRIFT_WINDOW, dtype=bool))
    assert c.drift == 0.0 and not c.novel(0.0)


def test_bounds_module_matches_known_values() -> None:
    assert bounds.lower(95, 100) == pytest.approx(0.8977, abs=1e-4)
    assert bounds.upper(5, 100) == pytest.approx(0.1023, abs=1e-4)
    assert bounds.lower(299, 299) >= 0.99 > bounds.lower(298, 298)
    assert bounds.positives_needed(0.99) == 299
    assert bounds.max_misses(20, 0.99) is None
    m = bounds.max_misses(1000, 0.99)
    assert m is not None and bounds.lower(1000 - m, 1000) >= 0.99 > bounds.lower(1000 - m - 1, 1000)
