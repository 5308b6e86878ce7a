"""``safeguard eval``: run a labelled set through one or several policies and score it.

Datasets: any layout :mod:`streams.authoring.datasets` reads. Requests run concurrently over the
replica pool. ``separate`` mode asks one request per (item, policy); ``combined`` one request per
item for all the policies together (the layout ``policies.mode: combined`` uses), so the accuracy
cost of combining is measured on the same items.

Scoring, per policy: an item whose label the dataset does not give for that policy is *skipped*
(counted, never scored); an item whose answer was unusable, or whose replica failed after retries,
is an *error* (counted, left out of the confusion matrix, never scored as a negative). With several
policies, the overall figures sum the confusion counts over (item, policy) pairs, and
``multi_policy_accuracy`` is the technical report's metric: the share of items on which every
policy's verdict matches gold, over the items with a gold label and a verdict for every policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from streams.authoring.datasets import Item
from streams.errors import PoisonError, RetryableError
from streams.inference.labeler import Labeler
from streams.inference.verdict import Verdict
from streams.policy.model import Policy


@dataclass(frozen=True)
class ItemResult:
    """One (item, policy) verdict next to its gold label."""

    index: int  # the item's position in the dataset
    policy_id: str
    text: str
    label: int
    violation: bool | None
    category: str | None = None
    rationale: str | None = None
    reasoning: str | None = None
    error: str | None = None
    where: str = ""


@dataclass(frozen=True)
class Scores:
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    errors: int
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(results: list[ItemResult], skipped: int = 0) -> Scores:
    tp = sum(1 for r in results if r.violation is True and r.label == 1)
    fp = sum(1 for r in results if r.violation is True and r.label == 0)
    tn = sum(1 for r in results if r.violation is False and r.label == 0)
    fn = sum(1 for r in results if r.violation is False and r.label == 1)
    errors = sum(1 for r in results if r.violation is None)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scored = tp + fp + tn + fn
    return Scores(n=len(results), tp=tp, fp=fp, tn=tn, fn=fn, precision=round(precision, 4),
                  recall=round(recall, 4), f1=round(f1, 4), accuracy=round((tp + tn) / scored, 4) if scored else 0.0,
                  errors=errors, skipped=skipped)


@dataclass
class Evaluation:
    """Every verdict of a run, and how many items each policy skipped."""

    policies: list[Policy]
    results: list[ItemResult] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def per_policy(self) -> dict[str, Scores]:
        return {p.id: score([r for r in self.results if r.policy_id == p.id], self.skipped.get(p.id, 0))
                for p in self.policies}

    def overall(self) -> Scores:
        return score(self.results, sum(self.skipped.values()))

    def multi_policy(self) -> tuple[float | None, int]:
        """(accuracy, items counted): items with gold and a verdict for every policy."""
        by_item: dict[int, list[ItemResult]] = {}
        for r in self.results:
            by_item.setdefault(r.index, []).append(r)
        complete = [rs for rs in by_item.values()
                    if len(rs) == len(self.policies) and all(r.violation is not None for r in rs)]
        if not complete:
            return None, 0
        right = sum(1 for rs in complete if all(bool(r.label) == r.violation for r in rs))
        return round(right / len(complete), 4), len(complete)

    def report(self) -> dict[str, Any]:
        """The JSON summary: one policy's scores, or the overall ones with ``per_policy`` and
        ``multi_policy_accuracy`` (plus ``multi_policy_items``, the items it counts)."""
        if len(self.policies) == 1:
            return self.per_policy()[self.policies[0].id].as_dict()
        accuracy, items = self.multi_policy()
        return self.overall().as_dict() | {
            "per_policy": {pid: s.as_dict() for pid, s in self.per_policy().items()},
            "multi_policy_accuracy": accuracy, "multi_policy_items": items}


async def evaluate(policies: list[Policy], items: list[Item], labeler: Labeler, *, concurrency: int,
                   mode: str = "separate", progress: Callable[[], None] | None = None) -> Evaluation:
    """Classify every item for every policy that has a gold label for it (``concurrency`` requests
    at a time); results in dataset order. ``progress`` is called once per request."""
    run = Evaluation(policies, skipped={p.id: 0 for p in policies})
    wanted: list[tuple[int, Item, list[tuple[Policy, int]]]] = []
    for index, item in enumerate(items):
        known = []
        for p in policies:
            label = item.label_for(p.id)
            if label is None:
                run.skipped[p.id] += 1
            else:
                known.append((p, label))
        if known:
            wanted.append((index, item, known))
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, item: Item, policy: Policy, label: int) -> list[ItemResult]:
        async with gate:
            try:
                d = await labeler.decide(policy, item.text)
            except (PoisonError, RetryableError) as exc:
                return [_failed(index, item, policy, label, exc)]
            finally:
                if progress is not None:
                    progress()
        return [_result(index, item, policy, label, d.verdict, d.reasoning)]

    async def together(index: int, item: Item, known: list[tuple[Policy, int]]) -> list[ItemResult]:
        async with gate:
            try:
                verdicts, _, _ = await labeler.decide_combined(policies, item.text)
            except (PoisonError, RetryableError) as exc:
                return [_failed(index, item, p, label, exc) for p, label in known]
            finally:
                if progress is not None:
                    progress()
        out = []
        for p, label in known:
            v, reasoning = verdicts[p.id]
            out.append(_failed(index, item, p, label, v) if isinstance(v, PoisonError)
                       else _result(index, item, p, label, v, reasoning))
        return out

    if mode == "combined" and len(policies) > 1:
        jobs = [together(index, item, known) for index, item, known in wanted]
    else:
        jobs = [one(index, item, p, label) for index, item, known in wanted for p, label in known]
    for batch in await asyncio.gather(*jobs):
        run.results.extend(batch)
    return run


def requests_needed(policies: list[Policy], items: list[Item], mode: str) -> int:
    """How many requests :func:`evaluate` makes (the progress bar's total)."""
    known = [[p for p in policies if item.label_for(p.id) is not None] for item in items]
    if mode == "combined" and len(policies) > 1:
        return sum(1 for k in known if k)
    return sum(len(k) for k in known)


def _result(index: int, item: Item, policy: Policy, label: int, v: Verdict, reasoning: str | None) -> ItemResult:
    return ItemResult(index, policy.id, item.text, label, v.violation, v.category, v.rationale, reasoning,
                      where=item.where)


def _failed(index: int, item: Item, policy: Policy, label: int, exc: Exception) -> ItemResult:
    kind = exc.error_type if isinstance(exc, PoisonError) else "replica_error"
    return ItemResult(index, policy.id, item.text, label, None, error=f"{kind}: {exc}", where=item.where)


def changed_items(a: list[ItemResult], b: list[ItemResult]) -> list[dict[str, Any]]:
    """Items whose verdict differs between two runs of one policy over the same dataset."""
    other = {r.index: r for r in b}
    return [{"text": x.text, "label": x.label, "a": x.violation, "b": y.violation}
            for x in a if (y := other.get(x.index)) is not None and x.violation != y.violation]
