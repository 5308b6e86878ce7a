"""Training a prefilter from labelled texts: the reasoner's own answers (label events) or any dataset
``eval`` reads.

The model is an L2-regularised logistic regression over the features of :mod:`streams.cascade.model`,
fitted by full-batch gradient descent with per-weight step sizes (AdaGrad): deterministic (no
random numbers anywhere, so the same data gives the same file), numpy only. Positives are weighted
so that both classes weigh the same in the loss: recall is what the threshold is chosen for.

The hold-out split is deterministic too: an item is held out when the hash of its normalised text
falls in the first ``holdout`` share of the hash space, so duplicates of one text never straddle
the split. The threshold is the highest score that keeps hold-out recall at or above the target,
then lowered by ``MARGIN`` in log-odds (a positive scoring a little below every held-out one is
still sent to the model): held-out recall at the final threshold is reported, and is at least the
target by construction. Too few positives in either part to measure that is an error, no file.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from streams.authoring.datasets import Item
from streams.cascade.model import BITS, Prefilter, featurize, log_odds
from streams.errors import ConfigError, FatalError
from streams.inference.cache import normalise
from streams.policy.model import Policy

MARGIN = 1.0  # log-odds the threshold is lowered below the target's: e-fold odds of safety
MIN_POSITIVES = 5  # in each of the training and the hold-out parts
EPOCHS = 300
STEP = 0.5
L2 = 1e-4


@dataclass(frozen=True)
class Example:
    text: str
    label: int


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


def threshold_for(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest score t such that recall of {score >= t} over the positives is >= target,
    lowered by MARGIN."""
    positive = np.sort(scores[labels == 1])
    misses = math.floor((1.0 - target) * len(positive) + 1e-9)  # positives that may fall below t
    return float(positive[misses]) - MARGIN


@dataclass(frozen=True)
class Trained:
    prefilter: Prefilter
    n_train: int
    n_holdout: int
    positives: int
    holdout_recall: float
    holdout_pass_rate: float  # the share of held-out items the model would still see


def train(policy: Policy, examples: list[Example], *, target_recall: float = 0.99, holdout: float = 0.2,
          source: str = "") -> Trained:
    """A prefilter for ``policy`` (stamped with its current version). Raises FatalError when the
    data cannot support the target (too few positives in the training or hold-out part: the CLI
    exits 1), ConfigError for arguments out of range (exit 2)."""
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
    scores = probe.scores([e.text for e in test])
    labels = np.asarray([e.label for e in test])
    threshold = threshold_for(scores, labels, target_recall)
    sent = scores >= threshold
    recall = float(sent[labels == 1].mean())
    pass_rate = float(sent.mean())
    figures = {"n_train": len(fit_on), "n_holdout": len(test), "positives": pos_train + pos_test,
               "target_recall": target_recall, "margin_log_odds": MARGIN, "holdout_recall": round(recall, 4),
               "holdout_pass_rate": round(pass_rate, 4), "source": source}
    prefilter = Prefilter(policy.id, policy.version, threshold, weights, bias, figures)
    return Trained(prefilter, len(fit_on), len(test), pos_train + pos_test, recall, pass_rate)


def examples_for(policy_id: str, items: list[Item]) -> list[Example]:
    """Examples from dataset items: those with a known label for ``policy_id``."""
    return [Example(item.text, label) for item in items if (label := item.label_for(policy_id)) is not None]
