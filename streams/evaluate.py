"""``safeguard eval``: run a labelled set through a policy and score it.

Datasets: JSONL ``{"text": ..., "label": 0|1}`` or CSV with ``text`` and ``label`` columns. Items
run concurrently over the replica pool. An item whose answer is unusable or whose replica failed
after retries is an *error*: counted in ``errors`` and left out of the confusion matrix, never
scored as a negative.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.errors import ConfigError, PoisonError, RetryableError
from streams.labeler import Labeler
from streams.policies import Policy


@dataclass(frozen=True)
class Item:
    text: str
    label: int


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


def load_dataset(path: Path) -> list[Item]:
    """Read JSONL or CSV; raises ConfigError naming the bad line."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc}") from exc
    items: list[Item] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(raw.splitlines())
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}: CSV needs 'text' and 'label' columns, found {reader.fieldnames}")
        for i, row in enumerate(reader, 2):
            items.append(_item(row.get("text"), row.get("label"), f"{path}:{i}"))
    else:
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{i}: not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{i}: each line must be a JSON object")
            items.append(_item(row.get("text"), row.get("label"), f"{path}:{i}"))
    if not items:
        raise ConfigError(f"{path}: no items")
    return items


def _item(text: Any, label: Any, where: str) -> Item:
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: 'text' must be a non-empty string")
    if str(label).strip() not in ("0", "1", "True", "False", "true", "false"):
        raise ConfigError(f"{where}: 'label' must be 0 or 1, got {label!r}")
    return Item(text, 1 if str(label).strip() in ("1", "True", "true") else 0)


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
