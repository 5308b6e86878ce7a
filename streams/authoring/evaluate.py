"""``safeguard eval``: run a labelled set through a policy and score it.

Datasets: any layout :mod:`streams.authoring.datasets` reads. Items
run concurrently over the replica pool. An item whose answer is unusable or whose replica failed
after retries is an *error*: counted in ``errors`` and left out of the confusion matrix, never
scored as a negative.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from streams.authoring.datasets import Item
from streams.errors import PoisonError, RetryableError
from streams.inference.labeler import Labeler
from streams.policy.model import Policy


@dataclass(frozen=True)
class ItemResult:
    text: str
    label: int
    violation: bool | None
    category: str | None = None
    rationale: str | None = None
    error: str | None = None


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(results: list[ItemResult]) -> Scores:
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
                  errors=errors)


async def evaluate(policy: Policy, items: list[Item], labeler: Labeler, *, concurrency: int,
                   progress: Callable[[], None] | None = None) -> list[ItemResult]:
    """Classify every item (``concurrency`` at a time); results in dataset order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> ItemResult:
        async with gate:
            try:
                d = await labeler.decide(policy, item.text)
                res = ItemResult(item.text, item.label, d.verdict.violation, d.verdict.category, d.verdict.rationale)
            except PoisonError as exc:
                res = ItemResult(item.text, item.label, None, error=f"{exc.error_type}: {exc}")
            except RetryableError as exc:
                res = ItemResult(item.text, item.label, None, error=f"replica_error: {exc}")
        if progress is not None:
            progress()
        return res

    return list(await asyncio.gather(*(one(i) for i in items)))


def changed_items(a: list[ItemResult], b: list[ItemResult]) -> list[dict[str, Any]]:
    """Items whose verdict differs between two runs over the same dataset."""
    return [{"text": x.text, "label": x.label, "a": x.violation, "b": y.violation}
            for x, y in zip(a, b, strict=True) if x.violation != y.violation]
