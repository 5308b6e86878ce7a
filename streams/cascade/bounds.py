"""Exact binomial confidence bounds (Clopper-Pearson), numpy- and scipy-free.

Used twice: training certifies a prefilter's recall with the lower bound over the hold-out's
violations (:mod:`streams.cascade.train`), and the live controller bounds the share of violations
among the pairs it skips from the audit sample (:mod:`streams.cascade.control`).

The bounds are one-sided at ``confidence``: ``lower(k, n)`` is the smallest ``p`` that the data
(``k`` successes in ``n`` trials) does not reject at level ``1 - confidence``, so the true ``p`` is
at least ``lower`` with that confidence. They are the inverse of the regularised incomplete beta
function: ``lower = B^-1(1 - c; k, n - k + 1)``, ``upper = B^-1(c; k + 1, n - k)``; the incomplete
beta is evaluated by its continued fraction (Lentz) and inverted by bisection, to about 1e-10.
"""

from __future__ import annotations

import math

CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _beta_quantile(q: float, a: float, b: float) -> float:
    """The ``x`` with ``I_x(a, b) = q`` (bisection: the function is increasing in ``x``)."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def _check(k: float, n: float, confidence: float) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k} n={n}")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")


def lower(k: float, n: float, confidence: float = CONFIDENCE) -> float:
    """One-sided lower confidence bound on a proportion after ``k`` successes in ``n`` trials
    (0 when ``k`` is 0 or ``n`` is 0)."""
    _check(k, n, confidence)
    if k == 0:
        return 0.0
    if k == n:
        return (1.0 - confidence) ** (1.0 / n)  # the closed form of the k = n case
    return _beta_quantile(1.0 - confidence, k, n - k + 1)


def upper(k: float, n: float, confidence: float = CONFIDENCE) -> float:
    """One-sided upper confidence bound on a proportion (1 when ``n`` is 0 or ``k == n``)."""
    _check(k, n, confidence)
    if n == 0 or k == n:
        return 1.0
    if k == 0:
        return 1.0 - (1.0 - confidence) ** (1.0 / n)
    return _beta_quantile(confidence, k + 1, n - k)


def positives_needed(target: float, confidence: float = CONFIDENCE) -> int:
    """The fewest positives whose lower bound can reach ``target`` at all (every one of them
    found): the smallest ``n`` with ``(1 - confidence) ** (1 / n) >= target``."""
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target}")
    n = math.ceil(math.log(1.0 - confidence) / math.log(target))
    while lower(n, n, confidence) < target:  # guard the ceil against rounding
        n += 1
    return n


def max_misses(n: int, target: float, confidence: float = CONFIDENCE) -> int | None:
    """The most of ``n`` positives that may be missed while the lower bound on recall still meets
    ``target`` (None: not even with none missed)."""
    if n == 0 or lower(n, n, confidence) < target:
        return None
    lo, hi = 0, n  # lower(n - m, n) decreases in m: the largest m that keeps it >= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lower(n - mid, n, confidence) >= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def weighted_lower(found: float, total: float, sum_sq: float, confidence: float = CONFIDENCE) -> float:
    """Lower bound on a weighted proportion (``found`` of ``total`` weight, ``sum_sq`` the sum of the
    squared weights): Clopper-Pearson at the Kish effective sample size ``total**2 / sum_sq``. With
    every weight 1 it is :func:`lower`. Weights are inverse sampling probabilities: a label history
    collected behind a cascade holds the audited share of the skipped pairs, each standing for
    ``1 / audit_rate`` of them."""
    if total <= 0 or sum_sq <= 0:
        return 0.0
    n_eff = total * total / sum_sq
    share = min(max(found / total, 0.0), 1.0)
    if share == 1.0:
        return lower(n_eff, n_eff, confidence)
    return lower(share * n_eff, n_eff, confidence)
