"""``safeguard policies lint``: checks a policy against the model guide's advice.

Errors (exit non-zero): unreadable or invalid front matter, file name not ``<id>.md``, a missing
required section (INSTRUCTIONS, DEFINITIONS, VIOLATES, SAFE, EXAMPLES), no output-format
instruction, example answers that do not match the declared output format, a malformed golden set.
Warnings: output instruction not repeated near the bottom, length outside 300-1,500 estimated
tokens (the guide finds 400-600 best), examples of only one label, a golden set under 100 items or
with either class under a fifth of it, and each thing an import had to assume (front matter
``assumptions``, written by ``safeguard policies import``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from streams.authoring.datasets import read_dataset
from streams.errors import ConfigError, PoisonError
from streams.inference.verdict import parse_verdict
from streams.policy.model import Policy, load_policy, policy_files

REQUIRED_SECTIONS = ("INSTRUCTIONS", "DEFINITIONS", "VIOLATES", "SAFE", "EXAMPLES")
TOKEN_RANGE = (300, 1500)
CHARS_PER_TOKEN = 4.0
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
_ANSWER = re.compile(r"^\s*Answer[^:\n]*:\s*(.+?)\s*$", re.MULTILINE)
_FORMAT = {
    "json": re.compile(r'"violation"|\bJSON\b'),
    "binary": re.compile(r"\b0 or 1\b|exactly one character", re.IGNORECASE),
}


@dataclass
class LintResult:
    path: Path
    policy: Policy | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tokens: int = 0


def estimate_tokens(text: str) -> int:
    """~4 characters per token for English text in o200k (the gpt-oss tokenizer)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def lint_policy(path: Path) -> LintResult:
    result = LintResult(path)
    try:
        policy = load_policy(path)
    except ConfigError as exc:
        result.errors.append(str(exc).removeprefix(f"{path}: "))
        return result
    result.policy = policy
    body = policy.body
    result.tokens = estimate_tokens(body)
    sections = _sections(body)
    for name in REQUIRED_SECTIONS:
        if name not in sections:
            result.errors.append(f"missing section '## {name}' (the guide's structure: {', '.join(REQUIRED_SECTIONS)})")
    _check_output_instruction(policy, sections, result)
    _check_examples(policy, sections, result)
    low, high = TOKEN_RANGE
    if not low <= result.tokens <= high:
        result.warnings.append(f"about {result.tokens} tokens; the guide finds 400-600 best (lint range {low}-{high})")
    _check_golden(path.with_name(f"{policy.id}.golden.jsonl"), policy.id, result)
    result.warnings += [f"assumed on import ({policy.meta.source or 'unknown source'}): {a}"
                        for a in policy.meta.assumptions]
    return result


def _sections(body: str) -> dict[str, tuple[int, int]]:
    """Required section name -> (start, end) offsets in the body."""
    heads = [(m.start(), m.end(), m.group(1).upper()) for m in _HEADING.finditer(body)]
    out: dict[str, tuple[int, int]] = {}
    for i, (_start, end, title) in enumerate(heads):
        for name in REQUIRED_SECTIONS:
            if title.startswith(name) and name not in out:
                out[name] = (end, heads[i + 1][0] if i + 1 < len(heads) else len(body))
    return out


def _check_output_instruction(policy: Policy, sections: dict[str, tuple[int, int]], result: LintResult) -> None:
    body = policy.body
    marker = _FORMAT[policy.meta.output]
    before_examples = body[: sections["EXAMPLES"][0]] if "EXAMPLES" in sections else body
    hits = [m.start() for m in marker.finditer(before_examples)]
    if not hits:
        what = 'a JSON object with "violation"' if policy.meta.output == "json" else "0 or 1"
        result.errors.append(f"no output-format instruction: say explicitly that the answer is {what}")
        return
    instr = sections.get("INSTRUCTIONS")
    if instr and not any(instr[0] <= h < instr[1] for h in hits):
        result.warnings.append("the output format is not stated in INSTRUCTIONS (near the top)")
    after_criteria = sections.get("SAFE", sections.get("VIOLATES", (0, 0)))[1]
    if not any(h >= after_criteria for h in hits):
        result.warnings.append("the output format is not repeated near the bottom, before EXAMPLES (the guide asks "
                               "for it twice)")


def _check_examples(policy: Policy, sections: dict[str, tuple[int, int]], result: LintResult) -> None:
    if "EXAMPLES" not in sections:
        return
    start, end = sections["EXAMPLES"]
    labels = set()
    for answer in _ANSWER.findall(policy.body[start:end]):
        stripped = answer.strip()
        if policy.meta.output == "binary" and stripped not in ("0", "1"):
            result.errors.append(f"example answer {stripped[:60]!r} is not 0 or 1 (output: binary)")
            continue
        if policy.meta.output == "json" and not stripped.startswith("{"):
            result.errors.append(f"example answer {stripped[:60]!r} is not a JSON object (output: json)")
            continue
        try:
            labels.add(parse_verdict(stripped).violation)
        except PoisonError as exc:
            result.errors.append(f"example answer unreadable: {exc}")
    if not labels:
        result.warnings.append("no labelled examples ('Content: ...' then 'Answer: ...')")
    elif len(labels) == 1:
        result.warnings.append("examples show only one label; add both violating and safe cases near the boundary")


GOLDEN_MIN_ITEMS = 100  # below this, recall is measured on a handful of positives
GOLDEN_MIN_SHARE = 0.2  # each class at least this share of the set


def _check_golden(path: Path, policy_id: str, result: LintResult) -> None:
    if not path.exists():
        return
    try:
        data = read_dataset(path)
    except ConfigError as exc:
        result.errors.append(str(exc))
        return
    result.errors.extend(p.removeprefix(f"{path.parent}/") for p in data.problems)
    labels = [label for item in data.items if (label := item.label_for(policy_id)) is not None]
    n, positives = len(labels), sum(labels)
    if n < GOLDEN_MIN_ITEMS:
        result.warnings.append(f"golden set {path.name} has {n} items; {GOLDEN_MIN_ITEMS} or more give usable "
                               "precision and recall (and enough positives to train a prefilter)")
    if n and min(positives, n - positives) < GOLDEN_MIN_SHARE * n:
        result.warnings.append(f"golden set {path.name} is unbalanced: {positives} violating and {n - positives} "
                               f"safe items; keep each class at {GOLDEN_MIN_SHARE:.0%} or more")


def lint_paths(paths: list[Path]) -> list[LintResult]:
    """Lint files and directories (every policy file inside, plus duplicate-id checks)."""
    files: list[Path] = []
    for p in paths:
        files.extend(policy_files(p) if p.is_dir() else [p])
    results = [lint_policy(f) for f in files]
    seen: dict[str, Path] = {}
    for r in results:
        if r.policy is not None:
            if r.policy.id in seen:
                r.errors.append(f"duplicate policy id {r.policy.id!r} (also in {seen[r.policy.id]})")
            seen[r.policy.id] = r.path
    return results
