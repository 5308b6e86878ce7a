"""Verdict parsing: the model's final answer to a label, pure and tolerant.

Accepted answers (docs/policies.md): the guide's JSON forms ``{"violation": 0|1, "policy_category":
..., "rule_ids": [...], "confidence": ..., "rationale": ...}``; for ``output: binary`` policies also
``0``/``1`` and the ``VALID``/``INVALID`` words of OpenAI's example spam policy, each as a whole
token: alone on the answer's first line (markdown emphasis, quotes, a final period tolerated; lines
after it ignored). ``1st rule applies`` is no verdict. Tolerated around JSON: code fences,
surrounding prose, whitespace, extra keys, ``"violation": "1"`` or ``true``, ``category`` for
``policy_category``, a string for ``rule_ids``, a list of bullets for ``rationale``.
Anything else raises :class:`PoisonError` (``unparseable_output``). An answer from a generation
that stopped on the length limit is never read, even when it looks complete: it was cut, and what
remains of it can say anything (``truncated_reasoning``). Callers retry both before dead-lettering,
since sampling may produce a usable answer next time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from streams.errors import ErrorType, PoisonError

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*|\s*```$")
_DECOR = r"[\s*_`'\"]*"  # markdown emphasis, code ticks, quotes
_BINARY = re.compile(rf"^{_DECOR}([01]){_DECOR}\.?{_DECOR}$")  # the whole first line
_WORD = re.compile(rf"^{_DECOR}(INVALID|VALID)(?:\s*\+\s*ESCALATE)?{_DECOR}\.?{_DECOR}$")
_TRUE = {"1", "true", "yes", "violation", "violates", "invalid"}
_FALSE = {"0", "false", "no", "none", "safe", "valid"}
_CONFIDENCE = {"low", "medium", "high"}


@dataclass(frozen=True)
class Verdict:
    """What the model decided for one policy."""

    violation: bool
    category: str | None = None
    rule_ids: list[str] = field(default_factory=list)
    confidence: str | None = None
    rationale: str | None = None


def parse_verdict(content: str | None, finish_reason: str | None = None, *,
                  output: Literal["json", "binary"] | None = None) -> Verdict:
    """Parse a final answer. ``output``: the policy's declared format; ``json`` accepts only a
    JSON object, ``binary`` (or None: unknown) also the whole-token forms.

    Raises:
        PoisonError: ``truncated_reasoning`` or ``unparseable_output``.
    """
    if finish_reason == "length":
        what = "before a final answer" if content is None or not content.strip() else "inside the final answer"
        raise PoisonError(ErrorType.TRUNCATED_REASONING, f"generation hit the length limit {what}")
    if content is None or not content.strip():
        raise PoisonError(ErrorType.UNPARSEABLE_OUTPUT, "model returned no final answer")
    text = _unfenced(content)
    obj = json_object(text)
    if obj is not None:
        return _from_json(obj, content)
    if output == "json":
        raise PoisonError(ErrorType.UNPARSEABLE_OUTPUT,
                          f"the policy answers in JSON and the final answer holds no JSON object: {_clip(content)}")
    first = text.splitlines()[0] if text else ""
    match = _BINARY.match(first)
    if match:
        return Verdict(violation=match.group(1) == "1")
    word = _WORD.match(first)
    if word:
        return Verdict(violation=word.group(1) == "INVALID")
    raise PoisonError(ErrorType.UNPARSEABLE_OUTPUT, f"cannot read a verdict from the final answer: {_clip(content)}")


def _unfenced(content: str) -> str:
    return _FENCE.sub("", content.strip()).strip()


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a model answer holds: from its first ``{`` to its last ``}`` (prose, code
    fences or a trailing remark around it are tolerated), or None when there is none."""
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        return None
    try:
        obj = orjson.loads(text[start : end + 1])
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _from_json(obj: dict[str, Any], raw: str) -> Verdict:
    violation = _flag(obj.get("violation", obj.get("label")))
    if violation is None:
        raise PoisonError(ErrorType.UNPARSEABLE_OUTPUT, f"final answer has no usable 'violation': {_clip(raw)}")
    category = obj.get("policy_category", obj.get("category"))
    rule_ids = obj.get("rule_ids") or []
    if isinstance(rule_ids, str):
        rule_ids = [rule_ids]
    confidence = obj.get("confidence")
    rationale = obj.get("rationale")
    if isinstance(rationale, list):
        rationale = "\n".join(str(r) for r in rationale)
    return Verdict(
        violation=violation,
        category=str(category) if category not in (None, "") else None,
        rule_ids=[str(r) for r in rule_ids] if isinstance(rule_ids, list) else [],
        confidence=confidence.lower() if isinstance(confidence, str) and confidence.lower() in _CONFIDENCE else None,
        rationale=str(rationale) if rationale not in (None, "") else None,
    )


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    return None


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_combined(content: str | None, policy_ids: list[str], finish_reason: str | None = None,
                   ) -> dict[str, Verdict | PoisonError]:
    """Parse a multi-policy answer ``{"<id>": {verdict}, ...}``: one result per policy id.

    A policy missing from the answer, or with an unreadable value, gets a PoisonError of its own;
    the others still count.
    """
    if finish_reason == "length" or content is None or not content.strip():
        err = PoisonError(ErrorType.TRUNCATED_REASONING if finish_reason == "length" else ErrorType.UNPARSEABLE_OUTPUT,
                          "generation hit the length limit" if finish_reason == "length"
                          else "model returned no final answer")
        return dict.fromkeys(policy_ids, err)
    obj = json_object(_unfenced(content))
    if obj is None:
        err = PoisonError(ErrorType.UNPARSEABLE_OUTPUT, f"combined answer is not a JSON object: {_clip(content)}")
        return dict.fromkeys(policy_ids, err)
    out: dict[str, Verdict | PoisonError] = {}
    for pid in policy_ids:
        value = obj.get(pid)
        if not isinstance(value, dict):
            out[pid] = PoisonError(ErrorType.UNPARSEABLE_OUTPUT, f"combined answer has no verdict object for {pid!r}")
            continue
        try:
            out[pid] = _from_json(value, orjson.dumps(value).decode())
        except PoisonError as exc:
            out[pid] = exc
    return out
