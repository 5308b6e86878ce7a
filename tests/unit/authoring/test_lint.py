from __future__ import annotations

import re
import shutil
from pathlib import Path

from streams.authoring.lint import lint_paths, lint_policy
from streams.cli.main import main


def copy(policies_dir: Path, tmp_path: Path, name: str = "spam") -> Path:
    dst = tmp_path / f"{name}.md"
    shutil.copy(policies_dir / f"{name}.md", dst)
    return dst


def test_starter_pack_is_clean(policies_dir: Path) -> None:
    results = lint_paths([policies_dir])
    assert len(results) >= 6
    for r in results:
        assert r.errors == [] and r.warnings == [], (r.path, r.errors, r.warnings)
        assert 400 <= r.tokens <= 800


def test_missing_output_instruction_is_an_error(policies_dir: Path, tmp_path: Path, capsys) -> None:
    path = copy(policies_dir, tmp_path)
    text = path.read_text()
    before, examples = text.split("## EXAMPLES", 1)
    before = re.sub(r".*JSON.*\n", "", before)
    before = re.sub(r'\{"violation".*\n', "", before)
    path.write_text(before + "## EXAMPLES" + examples)
    result = lint_policy(path)
    assert any("no output-format instruction" in e for e in result.errors)
    assert main(["policies", "lint", str(tmp_path)]) == 1
    assert "no output-format instruction" in capsys.readouterr().out


def test_instruction_not_repeated_is_a_warning(policies_dir: Path, tmp_path: Path) -> None:
    path = copy(policies_dir, tmp_path)
    text = path.read_text()
    start = text.index("## OUTPUT REMINDER")
    path.write_text(text[:start] + text[text.index("## EXAMPLES"):])
    result = lint_policy(path)
    assert result.errors == []
    assert any("not repeated" in w for w in result.warnings)


def test_missing_section_and_bad_example_answers(policies_dir: Path, tmp_path: Path) -> None:
    path = copy(policies_dir, tmp_path)
    text = path.read_text().replace("## DEFINITIONS", "## TERMS").replace("Answer: {\"violation\": 1", "Answer: yes {")
    path.write_text(text)
    errors = " | ".join(lint_policy(path).errors)
    assert "missing section '## DEFINITIONS'" in errors
    assert "is not a JSON object" in errors


def test_binary_policy_examples_must_be_0_or_1(tmp_path: Path) -> None:
    body = ("---\nid: bin\noutput: binary\n---\n# Bin\n## INSTRUCTIONS\nReturn exactly one character: 0 or 1.\n"
            "## DEFINITIONS\nx\n## VIOLATES (1)\nx\n## SAFE (0)\nx\nAnswer 0 or 1 only.\n## EXAMPLES\n"
            "Content: a\nAnswer: 1\n\nContent: b\nAnswer: maybe\n")
    (tmp_path / "bin.md").write_text(body)
    r = lint_policy(tmp_path / "bin.md")
    assert any("'maybe' is not 0 or 1" in e for e in r.errors)
    assert any("tokens" in w for w in r.warnings)  # far too short


def test_golden_set_lines_are_checked(policies_dir: Path, tmp_path: Path) -> None:
    copy(policies_dir, tmp_path)
    (tmp_path / "spam.golden.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 3}\n')
    r = lint_policy(tmp_path / "spam.md")
    assert any("spam.golden.jsonl:2" in e for e in r.errors)
    assert any("has 1 items" in w for w in r.warnings)


def test_the_toxicity_policy_in_the_evaluation_docs_is_lint_clean(tmp_path: Path) -> None:
    """docs/evaluation.md tells people to save this policy to reproduce the ToxicChat figure."""
    doc = (Path(__file__).resolve().parents[3] / "docs/evaluation.md").read_text()
    block = doc.split("<!-- toxicity-policy-start -->", 1)[1].split("<!-- toxicity-policy-end -->", 1)[0]
    text = block.split("```markdown\n", 1)[1].rsplit("```", 1)[0]
    (tmp_path / "toxicity.md").write_text(text)
    r = lint_policy(tmp_path / "toxicity.md")
    assert r.errors == [] and r.warnings == [], (r.errors, r.warnings)
