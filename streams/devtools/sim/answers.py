"""Where the simulator's verdicts come from, in order:

1. ``--answer-key``: a dataset in any layout :mod:`streams.authoring.datasets` reads (JSONL
   ``{"text": ..., "label": 0|1, "category": ..., "policy": optional id}``, the golden sets' layout;
   ``{"text", "labels": {id: 0|1}}`` for several policies; ToxicChat's CSV):
   the exact user content, else the longest key text contained in it (e.g. one turn of a chat
   transcript). An entry with ``policy`` only applies when the policy's first line names that id
   (as a whole word, e.g. ``# Spam (policy spam)``).
2. The policy's own EXAMPLES section: ``Content: ...`` followed by ``Answer: ...`` lines, matched
   the same way.
3. Otherwise "no violation".
Nothing here is a fixed result: each verdict is looked up from data the caller supplies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streams.authoring.datasets import load_dataset
from streams.errors import PoisonError
from streams.inference.verdict import parse_verdict

MIN_CONTAINED = 12
_EXAMPLES = re.compile(r"^#+\s*EXAMPLES\b.*?$(.*?)(?=^#+\s|\Z)", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_PAIR = re.compile(r"Content:\s*(.+?)\s*\n\s*Answer[^:\n]*:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Answer:
    violation: bool
    category: str | None
    source: str  # answer-key | policy-examples | default


@dataclass(frozen=True)
class _Entry:
    text: str
    answer: Answer
    policy: str | None


class _Index:
    """Exact and contained-text lookup over (text, answer) entries."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._exact: dict[str, list[_Entry]] = {}
        for e in entries:
            self._exact.setdefault(e.text, []).append(e)
        # Longest first so the most specific contained text wins.
        self._contained = sorted((e for e in entries if len(e.text) >= MIN_CONTAINED), key=lambda e: -len(e.text))

    def find(self, content: str, policy_head: str) -> Answer | None:
        """Exact match first, then contained text; an entry scoped to this policy beats an unscoped one.
        An exact hit costs one dict lookup: the contained texts are scanned only when it gives nothing."""
        best = _best(self._exact.get(content, ()), policy_head)
        if best is None:
            best = _best((e for e in self._contained if e.text in content), policy_head)
        return None if best is None else best.answer


def _best(candidates: Iterable[_Entry], policy_head: str) -> _Entry | None:
    unscoped = None
    for e in candidates:
        if e.policy is None:
            unscoped = unscoped or e
        elif _applies(e, policy_head):
            return e
    return unscoped


def _applies(entry: _Entry, policy_head: str) -> bool:
    if entry.policy is None:
        return True
    return re.search(rf"(?<![\w-]){re.escape(entry.policy)}(?![\w-])", policy_head) is not None


class AnswerKey:
    """The ``--answer-key`` file."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._index = _Index(entries)
        self.size = len(entries)

    @classmethod
    def load(cls, path: str | Path) -> AnswerKey:
        """Raises ConfigError naming ``file:line`` of a bad row (:mod:`streams.authoring.datasets`)."""
        data = load_dataset(Path(path))
        return cls([_Entry(item.text, Answer(bool(label), item.category, "answer-key"), policy)
                    for item in data.items for policy, label in item.labels.items()])

    def find(self, content: str, policy_text: str) -> Answer | None:
        return self._index.find(content, _head(policy_text))


def policy_examples(policy_text: str) -> _Index:
    """Index of the ``Content:``/``Answer:`` pairs in the policy's EXAMPLES section."""
    entries: list[_Entry] = []
    for section in _EXAMPLES.findall(policy_text):
        for content, answer in _PAIR.findall(section):
            try:
                v = parse_verdict(answer)
            except PoisonError:
                continue
            entries.append(_Entry(content.strip().strip('"\u201c\u201d'), Answer(v.violation, v.category,
                                                                                 "policy-examples"), None))
    return _Index(entries)


def _head(policy_text: str) -> str:
    for line in policy_text.splitlines():
        if line.strip():
            return line
    return ""
