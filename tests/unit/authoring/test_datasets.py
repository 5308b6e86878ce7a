"""The one dataset reader: JSONL and CSV layouts, file:line errors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.authoring.datasets import load_dataset, parse_categories, read_dataset
from streams.errors import ConfigError


def test_load_jsonl_and_csv(tmp_path: Path, policies_dir: Path) -> None:
    items = load_dataset(policies_dir / "spam.golden.jsonl").items
    assert len(items) >= 40 and {i.label for i in items} == {0, 1}
    csv = tmp_path / "d.csv"
    csv.write_text('text,label\n"hello, world",0\nbuy now,1\n')
    assert [(i.text, i.label) for i in load_dataset(csv).items] == [("hello, world", 0), ("buy now", 1)]


@pytest.mark.parametrize("content,match", [
    ('{"text": "a", "label": 2}\n', "label"),
    ('{"label": 1}\n', "text"),
    ("not json\n", "not JSON"),
    ("", "no labelled items"),
])
def test_bad_datasets(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_dataset(f)


def test_csv_quoting_embedded_newlines_and_a_bom(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_bytes('\ufefftext,label\n"two\nlines, and ""quotes""",1\nplain,0\n'.encode())
    items = load_dataset(f).items
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
    a, b = load_dataset(f).items
    assert (a.category, a.labels, b.category, b.labels) == ("SP2", {"spam": 1}, None, {None: 0})
    assert (a.label_for("spam"), a.label_for("harassment"), b.label_for("spam")) == (1, None, 0)


def test_csv_without_the_columns_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("body,verdict\nx,1\n")
    with pytest.raises(ConfigError, match="needs 'text' and 'label' columns"):
        load_dataset(f)


TOXICCHAT_HEADER = "conv_id,user_input,model_output,human_annotation,toxicity,jailbreaking,openai_moderation\n"


def test_the_toxicchat_csv_is_detected_by_its_header(tmp_path: Path) -> None:
    f = tmp_path / "toxicchat0124_test.csv"
    f.write_text(TOXICCHAT_HEADER + 'a1,"hi, there",ok,False,0,0,"[[""sexual"", 0.01]]"\n'
                 'a2,"write me something\nawful",no,True,1,1,"[]"\n')
    data = load_dataset(f)
    assert data.format == "toxicchat"
    assert [(i.text, i.label_for("any-policy")) for i in data.items] == [("hi, there", 0),
                                                                          ("write me something\nawful", 1)]
    assert data.items[1].where.endswith("toxicchat0124_test.csv:3")


def test_a_bad_toxicity_value_is_named_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text(TOXICCHAT_HEADER + "a1,fine,ok,False,0,0,[]\na2,bad,ok,False,maybe,0,[]\n")
    with pytest.raises(ConfigError, match=r"t\.csv:3: 'toxicity' must be 0 or 1"):
        load_dataset(f)


def test_moderation_lines_without_the_category_are_unknown_not_negative(tmp_path: Path) -> None:
    import gzip

    f = tmp_path / "samples-1680.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"prompt": "a", "S": 0, "SH": 1}\n{"prompt": "b", "S": 1}\n'
                                b'{"prompt": "c", "S": 0, "SH": 0, "V": 1}\n'))
    data = load_dataset(f, categories=parse_categories(["SH"]))
    assert data.format == "openai-moderation" and data.unlabelled == 1
    assert [i.label_for("self-harm") for i in data.items] == [1, None, 0]
    per_policy = load_dataset(f, categories=parse_categories(["SH=self-harm", "V=violent-extremism"]))
    assert [dict(i.labels) for i in per_policy.items] == [{"self-harm": 1}, {},
                                                           {"self-harm": 0, "violent-extremism": 1}]
    with pytest.raises(ConfigError, match="needs --category"):
        load_dataset(f)


def test_category_options_are_checked() -> None:
    assert parse_categories(["sh", "V=violent-extremism"]) == {"SH": None, "V": "violent-extremism"}
    with pytest.raises(ConfigError, match="the moderation codes are"):
        parse_categories(["XX"])
    with pytest.raises(ConfigError, match="CODE=POLICY_ID"):
        parse_categories(["SH", "V"])


def test_several_policies_in_one_file_and_unknown_labels(tmp_path: Path) -> None:
    f = tmp_path / "multi.jsonl"
    f.write_text('{"text": "a", "labels": {"spam": 1, "harassment": 0}}\n'
                 '{"text": "b", "labels": {"spam": null, "harassment": 1}}\n')
    a, b = load_dataset(f).items
    assert (a.label_for("spam"), a.label_for("harassment"), b.label_for("spam"), b.label_for("harassment")) == (
        1, 0, None, 1)
    f.write_text('{"text": "a", "labels": {"spam": 2}}\n')
    with pytest.raises(ConfigError, match=r"multi\.jsonl:1: 'labels\.spam' must be 0 or 1"):
        load_dataset(f)


def test_the_format_can_be_forced_and_a_wrong_one_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "data.txt"
    f.write_text('{"text": "a", "label": 1}\n')
    assert load_dataset(f).format == "jsonl"
    with pytest.raises(ConfigError, match="CSV needs 'user_input' and 'toxicity' columns"):
        load_dataset(f, "toxicchat")


def test_any_category_is_flagged_in_one_safe_only_when_all_are_known(tmp_path: Path) -> None:
    all_zero = {c: 0 for c in ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")}
    f = tmp_path / "m.jsonl"
    f.write_bytes(b"\n".join(orjson.dumps(r) for r in [
        {"prompt": "a", **all_zero}, {"prompt": "b", **all_zero, "V2": 1}, {"prompt": "c", "S": 0, "HR": 1},
        {"prompt": "d", "S": 0, "H": 0}]))
    data = load_dataset(f, categories=parse_categories(["any"]))
    assert [i.label_for("p") for i in data.items] == [0, 1, 1, None]
