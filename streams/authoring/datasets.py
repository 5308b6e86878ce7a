"""Labelled datasets: the one reader behind ``eval``, ``policies lint`` (golden sets) and the
simulator's ``--answer-key``.

Layouts: JSONL, one object per line, ``{"text": ..., "label": 0|1}``; or CSV with ``text`` and
``label`` columns (RFC 4180: quoted commas, quotes and newlines inside a field are fine). Optional
fields ``category`` (the expected policy category) and ``policy`` (the policy id a row is meant for)
are kept. A label is ``0`` or ``1`` (``true``/``false`` too); a text is a non-empty string. A UTF-8
byte-order mark is ignored. Every problem names its place as ``file:line``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.errors import ConfigError

_TRUE, _FALSE = {"1", "true"}, {"0", "false"}


@dataclass(frozen=True, slots=True)
class Item:
    """One labelled text."""

    text: str
    label: int  # 1: violates the policy, 0: does not
    category: str | None = None
    policy: str | None = None
    where: str = ""  # file:line


@dataclass
class Dataset:
    """What a file held: its valid items, and a ``file:line: problem`` line per bad row."""

    path: Path
    items: list[Item] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_dataset(path: Path) -> Dataset:
    """Read every row, keeping the good ones and describing the bad ones. Raises ConfigError only
    when the file itself cannot be read (missing, not UTF-8, a CSV without the columns)."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc}") from exc
    data = Dataset(path)
    rows = _csv_rows(raw, path) if path.suffix.lower() == ".csv" else _jsonl_rows(raw, path)
    for where, row in rows:
        try:
            data.items.append(_item(row, where))
        except ValueError as exc:
            data.problems.append(f"{where}: {exc}")
    return data


def load_dataset(path: Path) -> list[Item]:
    """Every item of a dataset; raises ConfigError naming the first bad row, or an empty file."""
    data = read_dataset(path)
    if data.problems:
        more = f" (and {len(data.problems) - 1} more)" if len(data.problems) > 1 else ""
        raise ConfigError(data.problems[0] + more)
    if not data.items:
        raise ConfigError(f"{path}: no items")
    return data.items


def _jsonl_rows(raw: str, path: Path) -> Iterator[tuple[str, Any]]:
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            yield where, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield where, ValueError(f"not JSON ({exc})")


def _csv_rows(raw: str, path: Path) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
        raise ConfigError(f"{path}: CSV needs 'text' and 'label' columns, found {reader.fieldnames}")
    start = reader.line_num + 1
    for row in reader:
        yield f"{path}:{start}", row
        start = reader.line_num + 1


def _item(row: Any, where: str) -> Item:
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    text, category, policy = row.get("text"), row.get("category"), row.get("policy")
    if not isinstance(text, str) or not text:
        raise ValueError("'text' must be a non-empty string")
    return Item(text, _label(row.get("label")), str(category) if category not in (None, "") else None,
                str(policy) if policy not in (None, "") else None, where)


def _label(value: Any) -> int:
    word = str(value).strip().lower() if isinstance(value, str | int) else None  # bool is an int
    if word in _TRUE:
        return 1
    if word in _FALSE:
        return 0
    raise ValueError(f"'label' must be 0 or 1, got {value!r}")
