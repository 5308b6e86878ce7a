from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.evaluate import ItemResult, changed_items, load_dataset, score


def test_scores_with_errors_excluded() -> None:
    results = [ItemResult("a", 1, True), ItemResult("b", 1, False), ItemResult("c", 0, True),
               ItemResult("d", 0, False), ItemResult("e", 0, False), ItemResult("f", 1, None, error="boom")]
    s = score(results)
    assert (s.n, s.tp, s.fn, s.fp, s.tn, s.errors) == (6, 1, 1, 1, 2, 1)
    assert s.precision == 0.5 and s.recall == 0.5 and s.f1 == 0.5 and s.accuracy == 0.6


def test_perfect_and_degenerate_scores() -> None:
    assert score([ItemResult("a", 1, True), ItemResult("b", 0, False)]).f1 == 1.0
    s = score([ItemResult("a", 0, False)])
    assert s.precision == 0.0 and s.recall == 0.0 and s.accuracy == 1.0


def test_load_jsonl_and_csv(tmp_path: Path, policies_dir: Path) -> None:
    items = load_dataset(policies_dir / "spam.golden.jsonl")
    assert len(items) >= 40 and {i.label for i in items} == {0, 1}
    csv = tmp_path / "d.csv"
    csv.write_text('text,label\n"hello, world",0\nbuy now,1\n')
    assert [(i.text, i.label) for i in load_dataset(csv)] == [("hello, world", 0), ("buy now", 1)]


@pytest.mark.parametrize("content,match", [
    ('{"text": "a", "label": 2}\n', "label"),
    ('{"label": 1}\n', "text"),
    ("not json\n", "not JSON"),
    ("", "no items"),
])
def test_bad_datasets(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_dataset(f)


def test_changed_items() -> None:
    a = [ItemResult("x", 1, True), ItemResult("y", 0, False)]
    b = [ItemResult("x", 1, False), ItemResult("y", 0, False)]
    assert changed_items(a, b) == [{"text": "x", "label": 1, "a": True, "b": False}]
