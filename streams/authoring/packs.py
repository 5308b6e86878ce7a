"""``safeguard policies import DIR``: a ROOST Model Community policy pack, as published, into our
policy files and datasets.

Two published layouts are read (roostorg/model-community, ``resources/policy-packs/``; the layouts
are described in docs/integrations.md, "ROOST policy packs"):

- **Labelled categories** (OpenAI's teen-safety pack): ``example_policies/<slug>/policy.md``, one
  ``## <Category> (<CODE> - ...)`` section per category ending in ``Output: `VALID``` or
  ``Output: `INVALID```, a ``## Label Format`` section with examples (``- "text" -> `DC0```), and
  validation sets ``datasets/<slug>.csv``: a disclaimer line, then a header (``Example,
  Classification, Responses, Response Label`` or ``Example Prompt, Prompt label, Example Generation,
  Generation Label``), then a prompt, its code, a model response and its code per row.
- **Remove / Permit** (the Christchurch Call's TVEC policy): one Markdown file (no extension) with
  ``## Invalid Content Types (Remove)`` and ``## Valid Content Types (Permit)`` sections, each
  category a bold ``**TVEC1: ...**`` line. No validation set is published.

Each policy becomes ``<id>.md`` in our structure (INSTRUCTIONS with the JSON answer format,
DEFINITIONS, VIOLATES (1), SAFE (0), EXAMPLES): the pack's text is kept word for word under those
headings, its output labels are mapped (``INVALID``/Remove -> ``violation: 1``, ``VALID``/Permit ->
``0``, the category code as ``policy_category``), and each validation set becomes
``<id>.golden.jsonl`` (``text``, ``label``, ``category``, ``source``: prompt or response) that
``lint``, ``eval`` and ``prefilter train`` read. What the import had to assume goes into the front
matter (``assumptions``) and ``lint`` repeats it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from streams.errors import ConfigError

_H2 = re.compile(r"^##\s+(.+?)\s*$", re.MULTILINE)
_H1 = re.compile(r"^#\s+(.+?)\s*$", re.MULTILINE)
_OUTPUT = re.compile(r"^Output:\s*`(VALID|INVALID)`", re.MULTILINE)
_CODE_IN_HEADING = re.compile(r"\(([A-Z]+[0-9]+)\b")
_LABEL_EXAMPLE = re.compile(r'^-\s*"(.+)"\s*->\s*`([A-Z]+[0-9.]*)`\s*$', re.MULTILINE)
_BOLD_CODE = re.compile(r"^\*\*([A-Z]+[0-9.]*[0-9])\s*:", re.MULTILINE)  # TVEC1, TVEC.01
_CODE = re.compile(r"^([A-Z]+)([0-9][0-9.]*)$")
_RULE = re.compile(r"^\s*---+\s*$", re.MULTILINE)
_ID_CHARS = re.compile(r"[^a-z0-9._-]+")

ANSWER_FORMAT = ('Answer with exactly one JSON object and nothing else: {{"violation": 0 or 1, "policy_category": '
                 '"<one of {codes}>", "rule_ids": ["<the code>"], "confidence": "low|medium|high", "rationale": '
                 '"<one or two sentences>"}}.')


@dataclass
class Section:
    title: str
    text: str  # the section's body, without its heading


@dataclass
class Imported:
    """One policy of the pack, in our format."""

    id: str
    source: Path
    title: str
    policy_text: str  # the whole policy file (front matter + body)
    golden: list[dict[str, object]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    dataset: Path | None = None
    problems: list[str] = field(default_factory=list)  # rows of the validation set left out, file:line: why

    @property
    def labelled(self) -> int:
        return sum(1 for row in self.golden if row["label"] is not None)


def import_pack(directory: Path) -> list[Imported]:
    """Every policy in the pack at ``directory`` (or a single policy file). Raises ConfigError when
    nothing in it is a policy of a known layout."""
    if not directory.exists():
        raise ConfigError(f"policy pack not found: {directory}")
    files = [directory] if directory.is_file() else sorted(p for p in directory.rglob("*") if p.is_file())
    out: list[Imported] = []
    for path in files:
        if path.suffix not in ("", ".md") or path.name.upper().startswith(("README", "LICENSE", "USAGE")):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if _OUTPUT.search(text):
            out.append(_labelled_categories(path, text, directory))
        elif re.search(r"^##\s+.*\(Remove\)", text, re.MULTILINE) and re.search(r"^##\s+.*\(Permit\)", text,
                                                                                   re.MULTILINE):
            out.append(_remove_permit(path, text))
    if not out:
        raise ConfigError(f"{directory}: no policy of a known pack layout (policy.md files with 'Output: `VALID`' / "
                          "'Output: `INVALID`' sections, or a policy with '(Remove)' and '(Permit)' sections); see "
                          "docs/integrations.md")
    seen: dict[str, Path] = {}
    for policy in out:
        if policy.id in seen:
            raise ConfigError(f"two policies of the pack would both be {policy.id!r}: {seen[policy.id]} and "
                              f"{policy.source}")
        seen[policy.id] = policy.source
    return out


def write_pack(policies: list[Imported], out: Path) -> list[Path]:
    """Write each policy (``<id>.md``) and its validation set (``<id>.golden.jsonl``) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for policy in policies:
        path = out / f"{policy.id}.md"
        path.write_text(policy.policy_text, encoding="utf-8")
        written.append(path)
        golden = out / f"{policy.id}.golden.jsonl"
        if policy.golden:
            golden.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in policy.golden))
            written.append(golden)
        else:  # an earlier import's set would be read as this policy's (lint, eval): not any more
            golden.unlink(missing_ok=True)
    return written


def _policy_id(path: Path) -> str:
    name = path.parent.name if path.name == "policy.md" else path.stem
    ident = _ID_CHARS.sub("-", name.lower()).strip("-._")
    if not ident:
        raise ConfigError(f"{path}: cannot make a policy id from {name!r}")
    return ident[:128]


def _split(text: str) -> tuple[str, str, list[Section]]:
    """(title, text before the first ``##``, sections)."""
    text = _RULE.sub("", text)
    h1 = _H1.search(text)
    title = h1.group(1).strip() if h1 else ""
    heads = list(_H2.finditer(text))
    preamble_start = h1.end() if h1 else 0
    preamble = text[preamble_start: heads[0].start() if heads else len(text)].strip()
    sections = [Section(m.group(1).strip(), text[m.end(): heads[i + 1].start() if i + 1 < len(heads)
                                                  else len(text)].strip())
                for i, m in enumerate(heads)]
    return title, preamble, sections


def _front(ident: str, title: str, source: str, assumptions: list[str]) -> str:
    meta = {"id": ident, "version": 1, "title": title or ident, "output": "json", "source": source,
            "assumptions": assumptions}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _answer(code: str, violation: int, rationale: str) -> str:
    return orjson.dumps({"violation": violation, "policy_category": code, "rule_ids": [code],
                         "confidence": "high", "rationale": rationale}).decode()


def _body(title: str, instructions: list[str], definitions: list[str], violates: list[Section], safe: list[Section],
          notes: list[Section], examples: list[tuple[str, str, int]], codes: str, mapping: str) -> str:
    answer = ANSWER_FORMAT.format(codes=codes)
    parts = [f"# {title}", "", "## INSTRUCTIONS",
             "Decide whether the content violates this policy (violation 1) or not (violation 0), "
             "then name the category code that fits best.", answer, mapping, ""]
    parts += instructions
    parts += ["## DEFINITIONS", ""] + (definitions or ["(The pack defines no terms beyond its categories.)", ""])
    parts += ["## VIOLATES (1)", ""]
    for s in violates:
        parts += [f"### {s.title}", "", s.text, ""]
    parts += ["## SAFE (0)", ""]
    for s in safe:
        parts += [f"### {s.title}", "", s.text, ""]
    for s in notes:
        parts += [f"## {s.title}", "", s.text, ""]
    parts += ["## OUTPUT", answer, "", "## EXAMPLES", ""]
    for text, code, violation in examples:
        parts += [f"Content: {text}", f"Answer: {_answer(code, violation, f'Category {code} of this policy.')}", ""]
    if not examples:
        parts += ["(The pack gives no labelled examples.)", ""]
    return "\n".join(parts).rstrip() + "\n"


def _labelled_categories(path: Path, text: str, root: Path) -> Imported:
    ident = _policy_id(path)
    title, preamble, sections = _split(text)
    assumptions: list[str] = []
    instructions: list[str] = [preamble, ""] if preamble else []
    definitions: list[str] = []
    violates: list[Section] = []
    safe: list[Section] = []
    notes: list[Section] = []
    code_label: dict[str, int] = {}
    label_examples: list[tuple[str, str]] = []
    for s in sections:
        name = s.title.lower()
        output = _OUTPUT.search(s.text)
        if output:
            violation = 1 if output.group(1) == "INVALID" else 0
            (violates if violation else safe).append(s)
            heading_code = _CODE_IN_HEADING.search(s.title)
            if heading_code:
                code_label[heading_code.group(1)] = violation
            else:
                assumptions.append(f"section '{s.title}' names no category code; its content is "
                                   f"{'a violation' if violation else 'safe'} but no code can be given for it")
        elif name.startswith(("goal", "scope", "instruction")):
            instructions += [f"### {s.title}", "", s.text, ""]
        elif name.startswith("definition"):
            definitions += [s.text, ""]
        elif name.startswith("label format"):
            label_examples = [(m.group(1), m.group(2)) for m in _LABEL_EXAMPLE.finditer(s.text)]
            notes.append(s)
        else:
            notes.append(s)
    if not violates:
        raise ConfigError(f"{path}: no section ends in 'Output: `INVALID`': nothing would be a violation")
    if not safe:
        assumptions.append("no section ends in 'Output: `VALID`': content outside every category is safe")
    assumptions.append("Output `INVALID` is a violation (1) and `VALID` is safe (0); the answer is our JSON object "
                       "with the category code as policy_category")
    examples: list[tuple[str, str, int]] = []
    for example, code in label_examples:
        if code in code_label:
            examples.append((example, code, code_label[code]))
        else:
            assumptions.append(f"Label Format example with unknown code {code} left out")
    codes = ", ".join(sorted(code_label))
    prefix = _common_prefix(code_label)
    imported = Imported(ident, path, title, "", assumptions=assumptions)
    dataset = _find_dataset(path, ident, root)
    if dataset is None:
        assumptions.append("no validation set found (datasets/<slug>.csv): no golden set written")
    else:
        imported.dataset = dataset
        _read_validation(dataset, code_label, prefix, imported)
    if any(row["label"] is None for row in imported.golden):
        blank = sum(1 for row in imported.golden if row["label"] is None)
        rows = "rows" if blank > 1 else "row"
        assumptions.append(f"{blank} validation {rows} without a code kept unlabelled (skipped when scored)")
    mapping = ("Where this policy says `INVALID` (Output: `INVALID`), answer violation 1; where it says `VALID`, "
               "violation 0. Never answer with the word itself.")
    body = _body(title or ident, instructions, definitions, violates, safe, notes, examples, codes, mapping)
    source = f"ROOST policy pack: {path.relative_to(root) if path != root else path.name}"
    imported.policy_text = _front(ident, title, source, assumptions) + body
    return imported


def _remove_permit(path: Path, text: str) -> Imported:
    ident = _policy_id(path)
    title, preamble, sections = _split(text)
    assumptions = ["the pack states no output labels: content of a '(Remove)' category is a violation (1), of a "
                   "'(Permit)' category safe (0); the answer is our JSON object with the category code",
                   "no validation set is published with this policy: no golden set written"]
    instructions: list[str] = [preamble, ""] if preamble else []
    definitions: list[str] = []
    violates: list[Section] = []
    safe: list[Section] = []
    notes: list[Section] = []
    codes: list[str] = []
    for s in sections:
        name = s.title.lower()
        found = _BOLD_CODE.findall(s.text)
        if "(remove)" in name:
            violates.append(s)
            codes += found
        elif "(permit)" in name:
            safe.append(s)
            codes += found
            if "human review" in s.text.lower():
                assumptions.append(f"'{s.title}' includes categories that ask for human review; they are answered "
                                   "as safe (0) here, so route them to review with an actions rule on their code")
        elif name.startswith("definition"):
            definitions += [s.text, ""]
        else:
            notes.append(s)
    mapping = ("Content of a category under Remove is a violation (1); content of a category under Permit, or of "
               "none, is not (0).")
    body = _body(title or ident, instructions, definitions, violates, safe, notes, [], ", ".join(codes) or "a code",
                 mapping)
    imported = Imported(ident, path, title, "", assumptions=assumptions)
    imported.policy_text = _front(ident, title, f"ROOST policy pack: {path.name}", assumptions) + body
    return imported


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _rows(reader: Any, path: Path, into: Imported) -> Iterator[list[str]]:
    """The CSV's rows; a row the csv module cannot read (a field over its size limit) ends the file
    with a problem named, never a traceback."""
    try:
        yield from reader
    except csv.Error as exc:
        into.problems.append(f"{path.name}:{reader.line_num}: unreadable CSV ({exc}); the rest of the file is left out")


def _common_prefix(code_label: dict[str, int]) -> str | None:
    prefixes = {m.group(1) for code in code_label if (m := _CODE.match(code))}
    return prefixes.pop() if len(prefixes) == 1 else None


def _find_dataset(policy: Path, ident: str, root: Path) -> Path | None:
    """``datasets/<slug>.csv`` in the pack (the teen-safety layout), searched upwards from the policy."""
    slug = policy.parent.name if policy.name == "policy.md" else policy.stem
    if root.is_file():  # one policy file: its own folder (or the folder above it) only
        root = policy.parent.parent if policy.name == "policy.md" else policy.parent
    for parent in [policy.parent, *policy.parents]:
        candidate = parent / "datasets" / f"{slug}.csv"
        if candidate.is_file():
            return candidate
        if parent == root or parent == parent.parent:
            break
    return None


def _read_validation(path: Path, code_label: dict[str, int], prefix: str | None, into: Imported) -> None:
    """Rows of a validation CSV: each row gives a prompt and its code, and a model response and its
    code; both become items. A disclaimer line above the header is skipped."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the validation set: {exc}") from exc
    reader = csv.reader(io.StringIO(raw, newline=""))
    header: list[str] | None = None
    for row in _rows(reader, path, into):
        line = reader.line_num
        if header is None:
            cells = [c.strip().lower() for c in row]
            if len(cells) >= 4 and cells[0].startswith("example") and ("label" in cells[3]):
                header = row
                into.assumptions.append(f"{path.name}: columns '{row[0]}' / '{row[1]}' are a prompt and its code, "
                                        f"'{row[2]}' / '{row[3]}' a model response and its code")
            continue
        if not any(c.strip() for c in row):
            continue
        if len(row) < 4:
            into.problems.append(f"{path.name}:{line}: {len(row)} columns, 4 expected")
            continue
        for text, code, source in ((row[0], row[1], "prompt"), (row[2], row[3], "response")):
            text, code = text.strip(), code.strip().upper()
            if not text:
                continue
            label: int | None
            if not code:
                label = None
            elif code in code_label:
                label = code_label[code]
            elif prefix and (m := _CODE.match(code)) and m.group(1) == prefix and _number(m.group(2)) is not None:
                label = 0 if _number(m.group(2)) == 0 else 1
                into.assumptions.append(f"{path.name}:{line}: code {code} has no section; read as "
                                        f"{'safe' if label == 0 else 'a violation'} by its number")
            else:
                into.problems.append(f"{path.name}:{line}: unknown code {code!r} (the policy's codes: "
                                     f"{', '.join(sorted(code_label))})")
                continue
            into.golden.append({"text": text, "label": label, "category": code or None, "source": source,
                                "where": f"{path.name}:{line}"})
    if header is None:
        raise ConfigError(f"{path}: no header row (Example..., <label>, ..., <label>) found")
