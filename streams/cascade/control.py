"""Holding a prefilter's recall live: the audit's evidence, a confidence bound, and a threshold
that tightens by itself when the evidence shows recall below target.

Evidence. Every scored pair of a policy ends in one of three ways: *sent* (at or above the
threshold, or flagged for evasion: the model decides it), *audited* (below the threshold but
sampled: the model decides it), *skipped* (decided "no violation" here). The model's verdict is
known for the sent and audited pairs only. Evidence is kept in score bins of ``STEP`` log-odds
laid on the trained threshold (so every candidate threshold is a bin edge), per stratum
(``familiar`` texts and ``novel`` ones, which are audited at different rates while the traffic
drifts), over a sliding window of the last ``window`` scored pairs (``SEGMENTS`` segments; the
oldest drops off when the newest fills).

Bound. At a threshold ``t`` the violations are split into *found* (in bins at or above ``t``,
or sent for an evasion flag) and *missed* (below ``t``). Missed = the violations observed below
``t`` (audit misses, and pairs sent by an earlier, lower threshold) + the unaudited skipped
pairs below ``t`` times their violation share, which only the audit sample measures:
``q in [lower(M, A), upper(M, A)]`` (Clopper-Pearson, :mod:`streams.cascade.bounds`), per
stratum. Recall ``found / (found + missed)`` then has a lower bound (with ``q``'s upper) and an
upper bound (with ``q``'s lower).

Control. The threshold starts at the trained one. When the *upper* bound at the current
threshold (over all pairs, or over the novel ones alone) is below the target, the evidence shows
recall below target: the threshold drops to the lower edge of the lowest bin holding a missed
violation (at least one step), so violations like the ones let through are sent from now on. The
*lower* bound is what certifies: the threshold rises back toward the trained one only to a point
where the lower bound meets the target (and novel texts show no shortfall). A lower bound under
the target alone does not tighten: with thin evidence it always is (the gauge shows how far the
audit is from certifying), and tightening on it would send a fresh consumer's every pair to the
model.

Drift. A text is *novel* when the share of its n-grams the model has weights for is below the
training hold-out's 5th percentile (``coverage_p05`` in the file): in steady traffic about 5% of
texts are. The traffic *drifts* while the last 25, 100 or 500 scored texts hold more novel ones
than a 5% share would give but once in ten thousand (a binomial test per window: the short
window reacts within a dozen texts, the long one to a slow creep); ``drift`` (the gauge) is the
excess of the novel share over the last 500 over 5%. While drifting, novel pairs are audited at
the drift audit rate: new phrasings reach the model, and the evidence, at once instead of one in
fifty. Novel texts also get a bound of their own: a shortfall among them tightens the threshold
even while the familiar majority's evidence would hide it.

Everything here is a plain class driven by the evidence alone (no clock): no Kafka, no metrics,
no threads.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.cascade import bounds

log = logging.getLogger(__name__)

STEP = 0.25  # log-odds per bin
HALF_BINS = 160  # bins on each side of the trained threshold: +-40 log-odds
SEGMENTS = 4  # the window slides a quarter at a time
EXPECTED_NOVEL = 0.05  # coverage_p05: 5% of the hold-out's texts fall below it
DRIFT_WINDOW = 500  # recent scored pairs the drift gauge is measured over
DRIFT_TESTS = (25, 100, DRIFT_WINDOW)  # windows of the drift test: short ones react within a few dozen texts
DRIFT_ALPHA = 1e-4  # false-alarm level of each window's test
RECOVER_EVERY = 1000  # outcomes between two searches for a looser threshold the evidence certifies

_lower = functools.lru_cache(maxsize=4096)(bounds.lower)  # the same (misses, audited) recur across thresholds
_upper = functools.lru_cache(maxsize=4096)(bounds.upper)

# Evidence array rows.
SENT_N, SENT_V, SKIP_N, AUD_N, AUD_M = range(5)
FAMILIAR, NOVEL = 0, 1


@dataclass(frozen=True)
class Bounds:
    """Recall at one threshold, from the window's evidence."""

    lower: float
    upper: float
    found: float  # violations at or above the threshold (estimated where skipped pairs hold some)
    observed_missed: int  # violations seen below it (audit misses, pairs an earlier threshold sent)
    audited: int
    audit_misses: int
    unaudited_skipped: int


@dataclass(frozen=True)
class Change:
    """A threshold move and why (for the log and the metrics)."""

    texts: str  # "familiar" or "novel": whose threshold moved
    old: float
    new: float
    reason: str
    bounds: Bounds


class RecallControl:
    """The controller of one prefilter file (one policy version); see the module doc."""

    def __init__(self, policy_id: str, trained_threshold: float, target: float, *, window: int = 200_000,
                 coverage_p05: float | None = None, enabled: bool = True,
                 confidence: float = bounds.CONFIDENCE) -> None:
        self.policy_id = policy_id
        self.trained = trained_threshold
        self.target = target
        self.enabled = enabled
        self.confidence = confidence
        self.coverage_p05 = coverage_p05
        self._edges = trained_threshold + STEP * np.arange(-HALF_BINS, HALF_BINS + 1)
        # The threshold in use per stratum, as an index among the edges (trained = HALF_BINS, 0: send
        # everything); a novel text's is never above a familiar one's.
        self._cuts = [HALF_BINS, HALF_BINS]
        self._segment_size = max(1, window // SEGMENTS)
        self._segments: deque[np.ndarray] = deque([self._empty()])
        self._in_segment = 0
        self._flagged_v = deque([0])  # violations sent for an evasion flag, per segment
        self._history: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)  # the last DRIFT_WINDOW texts: novel?
        self._critical = [_critical(k) for k in DRIFT_TESTS]
        self.drifting = False
        self._dirty = False
        self._since_recover = 0
        self.last: Bounds | None = None

    # The state the scoring stage reads.

    @property
    def threshold(self) -> float:
        """The threshold in use for familiar texts (``-inf``: every pair goes to the model)."""
        return self._threshold(self._cuts[FAMILIAR])

    @property
    def novel_threshold(self) -> float:
        """The threshold in use for novel texts (at most :attr:`threshold`)."""
        return self._threshold(self._cuts[NOVEL])

    def threshold_for(self, novel: bool) -> float:
        return self._threshold(self._cuts[NOVEL if novel else FAMILIAR])

    @property
    def tightened_by(self) -> float:
        """Log-odds the lower of the two thresholds sits below the trained one (0: not tightened;
        ``inf``: some texts all go to the model)."""
        cut = min(self._cuts)
        return (HALF_BINS - cut) * STEP if cut > 0 else math.inf

    def _threshold(self, cut: int) -> float:
        return -math.inf if cut <= 0 else float(self._edges[cut])

    @property
    def drift(self) -> float:
        """The novel share of the last ``DRIFT_WINDOW`` scored texts above the expected 5%."""
        if self.coverage_p05 is None or not len(self._history):
            return 0.0
        return max(0.0, float(self._history.mean()) - EXPECTED_NOVEL)

    def novel(self, coverage: float) -> bool:
        return self.coverage_p05 is not None and coverage < self.coverage_p05

    # Evidence in.

    def scored(self, novel: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """A batch of pairs scored, in order (``novel``: which texts were): the drift test after
        each one. Drifting while any window (the last 25, 100 or 500 texts) holds more novel texts
        than a 5% share would give but once in ``1 / DRIFT_ALPHA``."""
        seq = np.concatenate([self._history, novel.astype(bool)])
        cum = np.concatenate([[0], np.cumsum(seq, dtype=np.int64)])
        after = np.arange(len(self._history) + 1, len(seq) + 1)  # prefix lengths after each new pair
        drifting = np.zeros(len(novel), dtype=bool)
        for k, critical in zip(DRIFT_TESTS, self._critical, strict=True):
            drifting |= cum[after] - cum[np.maximum(after - k, 0)] >= critical
        self._history = seq[-DRIFT_WINDOW:]
        if len(novel):
            self.drifting = bool(drifting[-1])
        return drifting

    def skipped(self, scores: npt.NDArray[np.float64], novel: npt.NDArray[np.bool_]) -> None:
        """A batch of pairs decided "no violation" here (no verdict: no model read them)."""
        if not len(scores):
            return
        with np.errstate(invalid="ignore"):
            bins = np.clip(np.floor((np.nan_to_num(scores, nan=-np.inf) - self._edges[0]) / STEP + 1e-9), 0,
                           2 * HALF_BINS - 1)
        np.add.at(self._segments[-1][SKIP_N], (novel.astype(np.intp), bins.astype(np.intp)), 1)
        self._observed(len(scores))

    def outcome(self, score: float, outcome: str, violation: bool, *, novel: bool = False) -> None:
        """A pair's end: ``outcome`` is ``sent``, ``audited``, ``skipped`` or ``flagged`` (sent for
        an evasion signal, whatever its score); ``violation`` is the model's verdict (False for
        skipped pairs, which no model read)."""
        if outcome == "flagged":
            self._flagged_v[-1] += violation
        else:
            seg = self._segments[-1]
            b = self._bin(score)
            s = NOVEL if novel else FAMILIAR
            if outcome == "sent":
                seg[SENT_N, s, b] += 1
                seg[SENT_V, s, b] += violation
            else:
                seg[SKIP_N, s, b] += 1
                if outcome == "audited":
                    seg[AUD_N, s, b] += 1
                    seg[AUD_M, s, b] += violation
        self._observed(1)

    def _observed(self, n: int) -> None:
        self._dirty = True
        self._since_recover += n
        self._in_segment += n
        if self._in_segment >= self._segment_size:  # a batch may overfill a segment a little
            self._in_segment = 0
            self._segments.append(self._empty())
            self._flagged_v.append(0)
            if len(self._segments) > SEGMENTS:
                self._segments.popleft()
                self._flagged_v.popleft()

    # Decisions out.

    def evaluate(self, *, force: bool = False) -> Change | None:
        """Re-check the bounds after new evidence and move a threshold if the evidence says so
        (the search for a looser threshold runs every ``RECOVER_EVERY`` outcomes, or when
        ``force``d). Returns the change, if any. Driven by evidence, never by a clock: the same
        outcomes in the same order give the same thresholds.

        Each stratum is held to the target on its own evidence: familiar texts step the threshold
        below the lowest violation let through; novel texts, on which the prefilter has shown it
        falls short, all go to the model (their threshold to ``-inf``) until their own evidence
        certifies a threshold again."""
        if not self._dirty:
            return None
        self._dirty = False
        ev = self._evidence()
        self.last = self._bounds(ev, self._cuts)
        if not self.enabled:
            return None
        familiar = self._bounds(ev, self._cuts, strata=(FAMILIAR,), flagged=False)
        if familiar.upper < self.target:
            return self._tighten(ev, familiar)
        novel = self._bounds(ev, self._cuts, strata=(NOVEL,), flagged=False)
        if novel.upper < self.target and self._cuts[NOVEL] > 0:
            return self._move(ev, NOVEL, 0, "the upper bound on recall over novel texts is below the target", novel)
        if min(self._cuts) < HALF_BINS and (force or self._since_recover >= RECOVER_EVERY):
            self._since_recover = 0
            return self._recover(ev)
        return None

    def bounds_at(self, threshold: float, *, novel_threshold: float | None = None) -> Bounds:
        """The bounds the window's evidence gives at any threshold (rounded to a bin edge; novel
        texts at ``novel_threshold``, by default the same)."""
        cut = self._cut_of(threshold)
        novel = cut if novel_threshold is None else self._cut_of(novel_threshold)
        return self._bounds(self._evidence(), [cut, min(novel, cut)])

    def _cut_of(self, threshold: float) -> int:
        if threshold == -math.inf:
            return 0
        return int(np.clip(round((threshold - self.trained) / STEP) + HALF_BINS, 0, 2 * HALF_BINS))

    def _tighten(self, ev: np.ndarray, familiar: Bounds) -> Change:
        below = ev[:, FAMILIAR, : self._cuts[FAMILIAR]]
        missed = np.nonzero(below[SENT_V] + below[AUD_M])[0]
        lowest = int(missed[0]) if len(missed) else self._cuts[FAMILIAR] - 1
        cut = max(0, min(lowest, self._cuts[FAMILIAR] - 1))
        return self._move(ev, FAMILIAR, cut, "the upper bound on recall over familiar texts is below the target",
                          familiar)

    def _move(self, ev: np.ndarray, stratum: int, cut: int, reason: str, at: Bounds) -> Change:
        old = self._threshold(self._cuts[stratum])
        self._cuts[stratum] = cut
        self._cuts[NOVEL] = min(self._cuts[NOVEL], self._cuts[FAMILIAR])
        self.last = self._bounds(ev, self._cuts)
        return Change("novel" if stratum == NOVEL else "familiar", old, self._threshold(cut), reason, at)

    def _recover(self, ev: np.ndarray) -> Change | None:
        """The highest threshold, per stratum, whose lower bound meets the target (familiar first:
        a novel text's threshold never rises above it)."""
        for stratum in (FAMILIAR, NOVEL):
            ceiling = HALF_BINS if stratum == FAMILIAR else self._cuts[FAMILIAR]
            for cut in range(ceiling, self._cuts[stratum], -1):
                cuts = list(self._cuts)
                cuts[stratum] = cut
                at = self._bounds(ev, cuts, strata=(stratum,), flagged=False)
                if at.lower >= self.target:
                    return self._move(ev, stratum, cut, "the lower bound on recall meets the target", at)
        return None

    # Internals.

    def _empty(self) -> np.ndarray:
        return np.zeros((5, 2, 2 * HALF_BINS), dtype=np.int64)

    def _bin(self, score: float) -> int:
        if not math.isfinite(score):
            return 0 if score < 0 else 2 * HALF_BINS - 1
        k = math.floor((score - self._edges[0]) / STEP + 1e-9)  # a score on an edge is in the bin above it
        return min(max(k, 0), 2 * HALF_BINS - 1)

    def _evidence(self) -> np.ndarray:
        return np.sum(np.stack(self._segments), axis=0)

    def _bounds(self, ev: np.ndarray, cuts: list[int], *, strata: tuple[int, ...] = (FAMILIAR, NOVEL),
                flagged: bool = True) -> Bounds:
        """Recall bounds with each stratum cut at its own threshold (see the module doc)."""
        found = float(sum(self._flagged_v)) if flagged else 0.0
        observed = audited = misses = unaudited = 0
        lo_missed = hi_missed = 0.0
        for s in strata:
            above, below = ev[:, s, cuts[s]:], ev[:, s, : cuts[s]]
            unaud_above = above[SKIP_N] - above[AUD_N]
            share_above = np.where(above[AUD_N] > 0, above[AUD_M] / np.maximum(above[AUD_N], 1), 0.0)
            found += float(above[SENT_V].sum() + above[AUD_M].sum() + (unaud_above * share_above).sum())
            seen = int(below[SENT_V].sum() + below[AUD_M].sum())
            a, m = int(below[AUD_N].sum()), int(below[AUD_M].sum())
            u = int(below[SKIP_N].sum()) - a
            observed, audited, misses, unaudited = observed + seen, audited + a, misses + m, unaudited + u
            hi_missed += seen + (u * _upper(m, a, self.confidence) if a else u)
            lo_missed += seen + (u * _lower(m, a, self.confidence) if a else 0.0)
        # The upper bound is about this window: an observed miss is a fact about it, so it tightens
        # at once. The lower bound certifies the traffic to come: it also covers the window's
        # violations being a sample (Clopper-Pearson over them), so ten found of ten certify 0.74.
        total = found + hi_missed
        lower = _lower(math.floor(found), math.ceil(total), self.confidence) if total > 0 else 0.0
        upper = found / (found + lo_missed) if found + lo_missed > 0 else 1.0
        return Bounds(lower, upper, found, observed, audited, misses, unaudited)


def _critical(k: int) -> int:
    """The fewest novel texts among ``k`` that a 5% novel share gives with probability under
    ``DRIFT_ALPHA`` (the binomial tail ``P(X >= c) = I_p(c, k - c + 1)``)."""
    for c in range(1, k + 1):
        if bounds.betainc(c, k - c + 1, EXPECTED_NOVEL) < DRIFT_ALPHA:
            return c
    return k + 1
