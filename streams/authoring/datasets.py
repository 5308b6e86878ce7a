"""Labelled datasets: the one reader behind ``eval``, ``policies lint`` (golden sets), the prefilter
trainer and the simulator's ``--answer-key``.

Formats (``--format``, ``auto`` by default: detected from the file):

- ``jsonl``: one object per line, ``{"text": ..., "label": 0|1}``; or, for several policies,
  ``{"text": ..., "labels": {"<policy id>": 0|1, ...}}``. Optional ``category`` (the expected
  policy category) and ``policy`` (the one policy a ``label`` is for) are kept.
- ``csv``: ``text`` and ``label`` columns (optional ``category``, ``policy``).
- ``toxicchat``: the ToxicChat annotation CSV (``conv_id, user_input, model_output,
  human_annotation, toxicity, jailbreaking, openai_moderation``): text = ``user_input``, label =
  ``toxicity``. Detected by its header.
- ``openai-moderation``: the 2022 OpenAI moderation JSONL (``{"prompt": ..., "S": 0|1, "H": ...,
  "V", "HR", "SH", "S3", "H2", "V2"}``), plain or gzipped. ``categories`` picks the label: ``{"SH":
  None}`` for the policy under evaluation, ``{"SH": "self-harm", "V": "violent-extremism"}`` per
  policy; ``ANY`` is "flagged in any category". A line without that key has no label for it.
  Detected by ``prompt`` without ``text``.

A label that is missing or null is unknown: the item is skipped for that policy and counted, never
scored as a negative. A label is ``0`` or ``1`` (``true``/``false`` too). CSV follows RFC 4180
(quoted commas, quotes and newlines inside a field); a UTF-8 byte-order mark is ignored; ``.gz``
files are read transparently. Every problem names its place as ``file:line``.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from streams.errors import ConfigError

Format = Literal["auto", "jsonl", "csv", "toxicchat", "openai-moderation"]
FORMATS: tuple[str, ...] = ("auto", "jsonl", "csv", "toxicchat", "openai-moderation")
TOXICCHAT_COLUMNS = ("conv_id", "user_input", "model_output", "human_annotation", "toxicity", "jailbreaking",
                     "openai_moderation")
MODERATION_CODES = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
ANY = "ANY"  # flagged in any category: 1 if any code is 1, 0 if all eight are 0, else unknown
_TRUE, _FALSE = {"1", "true"}, {"0", "false"}
ANY_POLICY: None = None  # the key of a label that is for whichever policy is evaluated


@dataclass(frozen=True, slots=True)
class Item:
    """One labelled text: a label per policy id, or under ``None`` for the policy being evaluated."""

    text: str
    labels: Mapping[str | None, int]
    category: str | None = None
    where: str = ""  # file:line

    def label_for(self, policy_id: str) -> int | None:
        """The gold label for ``policy_id``; None when the dataset does not say (skip, never 0)."""
        label = self.labels.get(policy_id)
        return label if label is not None else self.labels.get(None)

    @property
    def label(self) -> int:
        """The single label of a one-policy item (golden sets, answer keys)."""
        return next(iter(self.labels.values()))


@dataclass
class Dataset:
    """What a file held: its valid items (those without any known label included: they are
    skipped when scored), a ``file:line: problem`` line per bad row, and how many items carry no
    label at all."""

    path: Path
    format: str
    items: list[Item] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unlabelled: int = 0


def parse_categories(specs: list[str]) -> dict[str, str | None]:
    """``--category CODE[=POLICY_ID]`` options: ``["SH"]`` -> ``{"SH": None}``; ``["SH=self-harm",
    "V=violent-extremism"]`` -> per policy. Raises ConfigError on an unknown code."""
    out: dict[str, str | None] = {}
    for spec in specs:
        code, _, policy = spec.partition("=")
        code = code.strip().upper()
        if code not in (*MODERATION_CODES, ANY):
            raise ConfigError(f"--category {spec!r}: the moderation codes are {', '.join(MODERATION_CODES)} "
                              f"(or {ANY}: flagged in any of them)")
        out[code] = policy.strip() or None
    if sum(1 for p in out.values() if p is None) > 1:
        raise ConfigError("several --category codes need a policy each: CODE=POLICY_ID")
    return out


def read_dataset(path: Path, fmt: str = "auto", *, categories: Mapping[str, str | None] | None = None) -> Dataset:
    """Read every row, keeping the good ones and describing the bad ones. Raises ConfigError only
    when the file itself cannot be read or has the wrong shape (missing, not UTF-8, CSV columns
    missing, moderation data without ``categories``)."""
    raw = _read_text(path)
    kind = _detect(raw, path) if fmt == "auto" else fmt
    if kind not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}; choose from {', '.join(FORMATS)}")
    data = Dataset(path, kind)
    if kind == "openai-moderation":
        if not categories:
            raise ConfigError(f"{path}: the 2022 moderation set needs --category CODE (one of "
                              f"{', '.join(MODERATION_CODES)}), or CODE=POLICY_ID per policy")
        rows: Iterator[tuple[str, Any]] = _jsonl_rows(raw, path)
        make = _moderation_item(categories)
    elif kind == "toxicchat":
        rows, make = _csv_rows(raw, path, ("user_input", "toxicity")), _toxicchat_item
    elif kind == "csv":
        rows, make = _csv_rows(raw, path, ("text", "label")), _item
    else:
        rows, make = _jsonl_rows(raw, path), _item
    for where, row in rows:
        try:
            item = make(row, where)
        except ValueError as exc:
            data.problems.append(f"{where}: {exc}")
            continue
        data.items.append(item)
        data.unlabelled += not item.labels
    return data


def load_dataset(path: Path, fmt: str = "auto", *, categories: Mapping[str, str | None] | None = None) -> Dataset:
    """A dataset with no bad row; raises ConfigError naming the first one, or an empty file."""
    data = read_dataset(path, fmt, categories=categories)
    if data.problems:
        more = f" (and {len(data.problems) - 1} more)" if len(data.problems) > 1 else ""
        raise ConfigError(data.problems[0] + more)
    if data.unlabelled == len(data.items):
        raise ConfigError(f"{path}: no labelled items" + (f" ({data.unlabelled} rows without a label)"
                                                          if data.unlabelled else ""))
    return data


def _read_text(path: Path) -> str:
    try:
        blob = path.read_bytes()
        if path.suffix.lower() == ".gz" or blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        return blob.decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read dataset {path}: not UTF-8 ({exc})") from exc


def _detect(raw: str, path: Path) -> str:
    """The format of a file: its suffix says JSON lines or CSV (else its first line does); the
    header or first object says which layout."""
    first = next((line for line in raw.splitlines() if line.strip()), "")
    suffix = Path(path.name.removesuffix(".gz")).suffix.lower()
    is_csv = suffix == ".csv" or (suffix not in (".jsonl", ".json", ".ndjson") and not first.lstrip().startswith("{"))
    if is_csv:
        header = next(csv.reader([first]), [])
        return "toxicchat" if {"user_input", "toxicity"} <= {h.strip() for h in header} else "csv"
    try:
        doc = orjson.loads(first)
    except orjson.JSONDecodeError:
        return "jsonl"  # the reader names the bad line
    if isinstance(doc, dict) and "prompt" in doc and "text" not in doc:
        return "openai-moderation"
    return "jsonl"


def _jsonl_rows(raw: str, path: Path) -> Iterator[tuple[str, Any]]:
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            yield where, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield where, ValueError(f"not JSON ({exc})")


def _csv_rows(raw: str, path: Path, needs: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    found = [h.strip() for h in reader.fieldnames or []]
    if not set(needs) <= set(found):
        raise ConfigError(f"{path}: CSV needs {' and '.join(repr(n) for n in needs)} columns, found {found}")
    reader.fieldnames = found
    start = reader.line_num + 1
    for row in reader:
        yield f"{path}:{start}", row
        start = reader.line_num + 1


def _item(row: Any, where: str) -> Item:
    obj = _object(row)
    text, category, policy = obj.get("text"), obj.get("category"), obj.get("policy")
    if not isinstance(text, str) or not text:
        raise ValueError("'text' must be a non-empty string")
    category = str(category) if category not in (None, "") else None
    if "labels" in obj:
        labels = obj["labels"]
        if not isinstance(labels, dict) or not labels:
            raise ValueError("'labels' must map policy ids to 0 or 1")
        known: dict[str | None, int] = {str(pid): label for pid, v in labels.items()
                                        if (label := _label(v, f"labels.{pid}")) is not None}
        return Item(text, known, category, where)
    label = _label(obj.get("label"), "label")
    if label is None:
        return Item(text, {}, category, where)
    return Item(text, {str(policy) if policy not in (None, "") else None: label}, category, where)


def _toxicchat_item(row: Any, where: str) -> Item:
    text = row.get("user_input")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'user_input' must be a non-empty string")
    label = _label(row.get("toxicity"), "toxicity")
    return Item(text, {None: label} if label is not None else {}, None, where)


def _moderation_item(categories: Mapping[str, str | None]) -> Any:
    def make(row: Any, where: str) -> Item:
        obj = _object(row)
        text = obj.get("prompt")
        if not isinstance(text, str) or not text:
            raise ValueError("'prompt' must be a non-empty string")
        labels = {policy: label for code, policy in categories.items()
                  if (label := _flagged(obj) if code == ANY else _label(obj.get(code), code)) is not None}
        return Item(text, labels, None, where)
    return make


def _flagged(obj: dict[str, Any]) -> int | None:
    """The ``ANY`` label of a moderation line: flagged if any category is; safe only if all are known."""
    labels = [_label(obj.get(code), code) for code in MODERATION_CODES]
    if 1 in labels:
        return 1
    return 0 if None not in labels else None


def _object(row: Any) -> dict[str, Any]:
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    return row


def _label(value: Any, name: str) -> int | None:
    """0 or 1; None for a label the dataset does not give (missing, null, empty cell)."""
    if value is None or value == "":
        return None
    word = str(value).strip().lower() if isinstance(value, str | int) else None  # bool is an int
    if word in _TRUE:
        return 1
    if word in _FALSE:
        return 0
    raise ValueError(f"'{name}' must be 0 or 1, got {value!r}")
