"""The retraining gate: a newly trained prefilter replaces the running one only if it is no worse on
fresh traffic.

Both prefilters are scored on the same fresh sample, each at its own threshold: the newest
label-history examples, kept out of the new one's training, and labelled after the newest label
the running one learned from (its ``history_until`` stamp), so neither is judged on labels it
trained on. The figures: the 95% lower bound on recall over the sample's violations
(:mod:`streams.cascade.bounds`) and the pass rate (the share still sent to the model). The new one
wins when its bound is at least the old one's (or meets the target) and its pass rate is at most
the old one's plus ``PASS_RATE_SLACK``. Too few fresh violations to compare recall keeps the old
one. :func:`judge` is pure; :func:`install` writes the outcome: over the running file (atomically)
or beside it as ``<file>.rejected``, which the consumer never loads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streams.cascade import bounds
from streams.cascade.model import Prefilter
from streams.cascade.normalise import skeleton
from streams.cascade.train import MIN_POSITIVES, Example

log = logging.getLogger(__name__)

PASS_RATE_SLACK = 0.02  # a new file may send this much more of the fresh sample to the model
REJECTED_SUFFIX = ".rejected"


@dataclass(frozen=True)
class Standing:
    """One prefilter's figures on the fresh sample, at its own threshold."""

    threshold: float
    recall: float | None  # None: no violations in the sample
    recall_lower_bound: float
    pass_rate: float
    positives: int

    def figures(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Decision:
    """Whether the new prefilter replaces the old one, and why."""

    replaced: bool
    reason: str
    new: Standing
    old: Standing | None  # None: nothing to compare with
    fresh_examples: int

    def figures(self) -> dict[str, Any]:
        return {"replaced": self.replaced, "reason": self.reason, "new": self.new.figures(),
                "old": self.old.figures() if self.old else None, "fresh_examples": self.fresh_examples}


def split_fresh(history: list[Example], share: float) -> tuple[list[Example], list[Example]]:
    """(older, fresh): the newest ``share`` of ``history`` (oldest first) as the fresh sample."""
    n = math.ceil(len(history) * share)
    return history[: len(history) - n], history[len(history) - n:]


def after(fresh: list[Example], running: Prefilter | None) -> list[Example]:
    """The fresh examples labelled after the newest label the running prefilter learned from
    (its ``history_until``): judged on labels it trained on, it would look better than it is.
    All of them when it has no such stamp."""
    until = (running.training or {}).get("history_until") if running is not None else None
    if not isinstance(until, str) or not until:
        return fresh
    return [e for e in fresh if e.labeled_at > until]


def unseen(examples: list[Example], fresh: list[Example]) -> list[Example]:
    """``examples`` without any text the fresh sample holds (compared as the prefilter sees them:
    the normaliser's skeleton), so a repeated or re-spelt text cannot let the new prefilter learn
    the answers it is then judged on."""
    held = {skeleton(e.text) for e in fresh}
    return [e for e in examples if skeleton(e.text) not in held]


def standing(prefilter: Prefilter, examples: list[Example]) -> Standing:
    """Recall bound and pass rate of ``prefilter`` on ``examples`` at its threshold, each example
    weighted by what it stands for (an audited label: the skipped pairs it was drawn from)."""
    labels = np.asarray([e.label for e in examples], dtype=np.int64)
    weights = np.asarray([e.weight for e in examples], dtype=np.float64)
    sent = prefilter.scores([e.text for e in examples]) >= prefilter.threshold
    positive = labels == 1
    total, found = float(weights[positive].sum()), float(weights[sent & positive].sum())
    bound = bounds.weighted_lower(found, total, float((weights[positive] ** 2).sum()))
    pass_rate = float(weights[sent].sum() / weights.sum()) if len(examples) else 0.0
    return Standing(prefilter.threshold, found / total if total else None, bound, pass_rate, int(positive.sum()))


def judge(new: Prefilter, old: Prefilter | None, fresh: list[Example], *, target_recall: float,
          min_positives: int = MIN_POSITIVES, slack: float = PASS_RATE_SLACK) -> Decision:
    """Compare ``new`` with the running ``old`` (None: there is none) on the ``fresh`` sample."""
    mine = standing(new, fresh)
    if old is None:
        return Decision(True, "no running prefilter to compare with", mine, None, len(fresh))
    if old.policy_version != new.policy_version:
        return Decision(True, f"the running prefilter is for policy version {old.policy_version} (ignored by "
                        f"the consumer)", mine, None, len(fresh))
    theirs = standing(old, fresh)
    if mine.positives < min_positives:
        return Decision(False, f"too few fresh violations to judge: {mine.positives} (needs {min_positives})",
                        mine, theirs, len(fresh))
    recall_ok = mine.recall_lower_bound >= theirs.recall_lower_bound or mine.recall_lower_bound >= target_recall
    pass_ok = mine.pass_rate <= theirs.pass_rate + slack
    if recall_ok and pass_ok:
        return Decision(True, "no worse on fresh labels", mine, theirs, len(fresh))
    why = []
    if not recall_ok:
        why.append(f"recall lower bound {mine.recall_lower_bound:.4f} below the running "
                   f"{theirs.recall_lower_bound:.4f} and the target {target_recall}")
    if not pass_ok:
        why.append(f"pass rate {mine.pass_rate:.4f} above the running {theirs.pass_rate:.4f} + {slack}")
    return Decision(False, "; ".join(why), mine, theirs, len(fresh))


def rejected_path(path: Path) -> Path:
    return path.with_name(path.name + REJECTED_SUFFIX)


def install(new: Prefilter, path: Path, decision: Decision) -> Path:
    """Write ``new`` over ``path`` (an atomic rename: the consumer never sees half a file) when the
    decision replaced it, else beside it as ``<path>.rejected`` with a warning. Returns the path written."""
    if decision.replaced:
        new.save(path)
        log.info("prefilter replaced policy=%s path=%s reason=%s", new.policy_id, path, decision.reason)
        return path
    aside = rejected_path(path)
    new.save(aside)
    old = decision.old
    log.warning("prefilter kept aside policy=%s path=%s reason=%s new_recall_lower_bound=%.4f new_pass_rate=%.4f "
                "old_recall_lower_bound=%s old_pass_rate=%s fresh_examples=%d", new.policy_id, aside, decision.reason,
                decision.new.recall_lower_bound, decision.new.pass_rate,
                f"{old.recall_lower_bound:.4f}" if old else None, f"{old.pass_rate:.4f}" if old else None,
                decision.fresh_examples)
    return aside
