"""The one dataset reader: JSONL and CSV layouts, file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.authoring.datasets import load_dataset, read_dataset
from streams.errors import ConfigError


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


def test_csv_quoting_embedded_newlines_and_a_bom(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_bytes('\ufefftext,label\n"two\nlines, and ""quotes""",1\nplain,0\n'.encode())
    items = load_dataset(f)
    assert [(i.text, i.label) for i in items] == [('two\nlines, and "quotes"', 1), ("plain", 0)]
    assert items[1].where.endswith("d.csv:4")  # the row after a two-line field starts on line 4


def test_every_bad_row_is_named_and_good_rows_are_kept(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": "maybe"}\n[1]\n{"text": "c", "label": false}\n')
    data = read_dataset(f)
    assert [(i.text, i.label) for i in data.items] == [("a", 1), ("c", 0)]
    assert [p.split(": ", 1)[0].rsplit("/", 1)[-1] for p in data.problems] == ["d.jsonl:3", "d.jsonl:4"]
    with pytest.raises(ConfigError, match=r"d.jsonl:3: 'label' must be 0 or 1.*\(and 1 more\)"):
        load_dataset(f)


def test_answer_key_fields_are_kept(tmp_path: Path) -> None:
    f = tmp_path / "k.jsonl"
    f.write_text('{"text": "x", "label": 1, "category": "SP2", "policy": "spam"}\n{"text": "y", "label": 0}\n')
    a, b = load_dataset(f)
    assert (a.category, a.policy, b.category, b.policy) == ("SP2", "spam", None, None)


def test_csv_without_the_columns_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("body,verdict\nx,1\n")
    with pytest.raises(ConfigError, match="needs 'text' and 'label' columns"):
        load_dataset(f)
