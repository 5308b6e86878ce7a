"""Training a prefilter from labelled texts: the reasoner's own answers (label events) or any dataset
``eval`` reads.

The model is an L2-regularised logistic regression over the features of :mod:`streams.cascade.model`,
fitted by full-batch gradient descent with per-weight step sizes (AdaGrad): deterministic (no
random numbers anywhere, so the same data gives the same file), numpy only. Positives are weighted
so that both classes weigh the same in the loss: recall is what the threshold is chosen for.

The hold-out split is deterministic too: an item is held out when the hash of its normalised text
falls in the first ``holdout`` share of the hash space, so duplicates of one text never straddle
the split. The threshold is certified, not estimated: it is the highest score at which the 95%
lower confidence bound on hold-out recall (:mod:`streams.cascade.bounds`) still meets the target,
so at most ``max_misses`` hold-out positives fall below it. It sits halfway between the lowest
positive that must be sent and the next hold-out score below, so nothing but the bound decides.
Too few hold-out positives to certify the target is an error, no file, unless the caller accepts
the best bound the data supports (``certify_available``: every hold-out positive sent, with
``UNCERTIFIED_MARGIN`` below the lowest, and the file says the target was not met). Too few
positives in either part to train at all is an error too.

A label history collected behind a running cascade is not a sample of the stream: it holds every
pair the prefilter sent but only the audited share of those it skipped. Each audited example
stands for ``1 / audit_rate`` pairs (:attr:`Example.weight`), so hold-out recall, pass rate and the
bound are weighted (Horvitz-Thompson; the bound at the Kish effective sample size): a violation
the prefilter let through, found by the audit, counts as the many it stands for.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.authoring.datasets import Item
from streams.cascade import bounds
from streams.cascade.model import BITS, Features, Prefilter, featurize, log_odds
from streams.errors import ConfigError, FatalError
from streams.inference.cache import normalise
from streams.policy.model import Policy

MIN_POSITIVES = 5  # in each of the training and the hold-out parts
# Log-odds below the lowest held-out violation when the target cannot be certified (--certify-available):
# too few violations to know the tail, so a violation a little below all of them still goes to the model.
UNCERTIFIED_MARGIN = 1.0
COVERAGE_QUANTILE = 5  # percentile of hold-out coverage stamped as the live drift reference
EPOCHS = 300
STEP = 0.5
L2 = 1e-4


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    labeled_at: str = ""  # from the label history: when the model labelled it (RFC 3339 UTC)
    weight: float = 1.0  # how many pairs of the stream it stands for (an audited pair: 1 / audit_rate)


def held_out(text: str, share: float) -> bool:
    """Deterministic split by the normalised text (duplicates land on the same side)."""
    digest = hashlib.blake2b(normalise(text).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def fit(texts: list[str], labels: list[int], *, bits: int = BITS, epochs: int = EPOCHS) -> tuple[np.ndarray, float]:
    """Weights and bias of the logistic regression (see the module doc)."""
    x = featurize(texts, bits)
    y = np.asarray(labels, dtype=np.float64)
    positives = float(y.sum())
    negatives = float(len(y) - positives)
    if not positives or not negatives:
        raise FatalError("training needs both violating and safe examples")
    sample_weight = np.where(y == 1, 0.5 / positives, 0.5 / negatives)
    weights = np.zeros(2**bits, dtype=np.float64)
    bias = 0.0
    g2w = np.full(2**bits, 1e-8)
    g2b = 1e-8
    values = x.scale[x.row]
    for _ in range(epochs):
        z = log_odds(x, weights, bias)
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
        err = (p - y) * sample_weight
        grad = np.bincount(x.bucket, weights=err[x.row] * values, minlength=2**bits) + L2 * weights
        grad_b = float(err.sum())
        g2w += grad * grad
        g2b += grad_b * grad_b
        weights -= STEP * grad / np.sqrt(g2w)
        bias -= STEP * grad_b / math.sqrt(g2b)
    return weights.astype(np.float32), bias


def threshold_for(scores: np.ndarray, labels: np.ndarray, misses: int) -> float:
    """A threshold that sends every positive but the ``misses`` lowest-scoring ones: halfway between
    the lowest positive that must be sent and the highest score strictly below it (that positive's
    score minus 1e-6 when nothing lies below), so it never exceeds that positive's score."""
    positive = np.sort(scores[labels == 1])
    if not 0 <= misses < len(positive):
        raise ValueError(f"misses must be in [0, {len(positive)}), got {misses}")
    lowest_sent = float(positive[misses])
    below = scores[scores < lowest_sent]
    if not len(below):
        return lowest_sent - 1e-6
    return min(lowest_sent, (lowest_sent + float(below.max())) / 2)


@dataclass(frozen=True)
class Certificate:
    """What the hold-out supports: the threshold, and the 95% lower bound on recall at it."""

    threshold: float
    holdout_positives: int
    sent_positives: int
    recall_lower_bound: float
    target_recall: float
    target_met: bool
    effective_positives: float  # the Kish effective count the bound rests on (= holdout_positives unweighted)

    def figures(self) -> dict[str, Any]:
        return {"recall_lower_bound": round(self.recall_lower_bound, 4), "holdout_positives": self.holdout_positives,
                "holdout_positives_effective": round(self.effective_positives, 1),
                "target_recall": self.target_recall, "target_met": self.target_met,
                "confidence": bounds.CONFIDENCE}


def certify(scores: np.ndarray, labels: np.ndarray, target: float, *, weights: np.ndarray | None = None,
            certify_available: bool = False) -> Certificate | None:
    """The highest threshold whose lower bound on recall over the positives meets ``target``. None
    when no threshold can (too few positives), unless ``certify_available``: then the threshold
    sends every positive, the best bound these positives support. ``weights``: what each example
    stands for (:func:`bounds.weighted_lower`); unweighted, the bound is exact Clopper-Pearson."""
    positive = labels == 1
    n = int(positive.sum())
    if n == 0:
        return None
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)[positive]
    ordered = w[np.argsort(scores[positive], kind="stable")]  # lowest-scoring positive first
    total, sum_sq = float(ordered.sum()), float((ordered * ordered).sum())
    below = np.concatenate(([0.0], np.cumsum(ordered)))  # weight of the m lowest positives

    def bound(misses: int) -> float:
        return bounds.weighted_lower(total - float(below[misses]), total, sum_sq)

    if bound(0) < target:
        if not certify_available:
            return None
        misses = 0
    else:
        lo, hi = 0, n - 1  # the bound falls as misses grow: the most misses that keep it >= target
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if bound(mid) >= target:
                lo = mid
            else:
                hi = mid - 1
        misses = lo
    threshold = threshold_for(scores, labels, misses)
    sent = scores[positive] >= threshold
    reached = bounds.weighted_lower(float(w[sent].sum()), total, sum_sq)
    if reached < target:  # the data cannot vouch for the tail below its lowest violation: keep a margin
        threshold = min(threshold, float(scores[positive].min()) - UNCERTIFIED_MARGIN)
    return Certificate(threshold, n, int(sent.sum()), reached, target, reached >= target, total * total / sum_sq)


def coverage(features: Features, weights: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Per text, the share of its n-grams whose bucket has a nonzero weight: how much of it the
    model has seen anything like (0 for a text too short to have an n-gram). Training never
    touches the weight of a bucket no training text hashed to, so a live fall in coverage means
    unfamiliar text."""
    known = (weights[features.bucket] != 0).astype(np.float64)
    counts = np.bincount(features.row, minlength=features.texts)
    hits = np.bincount(features.row, weights=known, minlength=features.texts)
    return np.divide(hits, counts, out=np.zeros(features.texts), where=counts > 0)


@dataclass(frozen=True)
class Trained:
    prefilter: Prefilter
    n_train: int
    n_holdout: int
    positives: int
    holdout_recall: float
    holdout_pass_rate: float  # the share of held-out items the model would still see
    certificate: Certificate


def train(policy: Policy, examples: list[Example], *, target_recall: float = 0.99, holdout: float = 0.2,
          source: str = "", certify_available: bool = False) -> Trained:
    """A prefilter for ``policy`` (stamped with its current version) whose threshold certifies
    ``target_recall`` on the hold-out at 95% confidence (see the module doc).

    Raises FatalError when the data cannot support it (too few positives to train, or too few
    hold-out positives to certify the target without ``certify_available``: the CLI exits 1),
    ConfigError for arguments out of range (exit 2)."""
    if not 0.5 <= target_recall < 1.0:
        raise ConfigError(f"--target-recall must be in [0.5, 1), got {target_recall}")
    if not 0.05 <= holdout <= 0.5:
        raise ConfigError(f"--holdout must be in [0.05, 0.5], got {holdout}")
    test = [e for e in examples if held_out(e.text, holdout)]
    fit_on = [e for e in examples if not held_out(e.text, holdout)]
    pos_train, pos_test = sum(e.label for e in fit_on), sum(e.label for e in test)
    if pos_train < MIN_POSITIVES or pos_test < MIN_POSITIVES:
        raise FatalError(f"too few positives to measure recall for {policy.id}: {pos_train} in training and "
                          f"{pos_test} in the hold-out split (each needs {MIN_POSITIVES}); add labelled violations "
                          f"or change --holdout")
    weights, bias = fit([e.text for e in fit_on], [e.label for e in fit_on])
    probe = Prefilter(policy.id, policy.version, 0.0, weights, bias)
    texts = [e.text for e in test]
    scores = probe.scores(texts)
    labels = np.asarray([e.label for e in test])
    stands_for = np.asarray([e.weight for e in test], dtype=np.float64)
    cert = certify(scores, labels, target_recall, weights=stands_for, certify_available=certify_available)
    if cert is None:
        needed = bounds.positives_needed(target_recall)
        raise FatalError(f"too few hold-out positives to certify recall {target_recall} for {policy.id}: "
                         f"{pos_test} held out, {needed} needed (95% lower bound), so about "
                         f"{math.ceil(needed / holdout)} labelled violations in all at --holdout {holdout} "
                         f"(there are {pos_train + pos_test}); add labelled violations, lower --target-recall, "
                         f"or pass --certify-available to certify what these support")
    sent = scores >= cert.threshold  # recall and pass rate as the stream would see them (weighted)
    recall = float(stands_for[sent & (labels == 1)].sum() / stands_for[labels == 1].sum())
    pass_rate = float(stands_for[sent].sum() / stands_for.sum())
    figures = {"n_train": len(fit_on), "n_holdout": len(test), "positives": pos_train + pos_test,
               "holdout_recall": round(recall, 4), "holdout_pass_rate": round(pass_rate, 4), **cert.figures(),
               "coverage_p05": round(float(np.percentile(coverage(featurize(texts, BITS), weights),
                                                         COVERAGE_QUANTILE)), 4),
               "source": source,
               # the newest label learned from: a retraining gate judges only on labels after it
               "history_until": max((e.labeled_at for e in examples if e.labeled_at), default=None)}
    prefilter = Prefilter(policy.id, policy.version, cert.threshold, weights, bias, figures)
    return Trained(prefilter, len(fit_on), len(test), pos_train + pos_test, recall, pass_rate, cert)


def examples_for(policy_id: str, items: list[Item]) -> list[Example]:
    """Examples from dataset items: those with a known label for ``policy_id``."""
    return [Example(item.text, label) for item in items if (label := item.label_for(policy_id)) is not None]
