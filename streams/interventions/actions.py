"""Decisions: the action an event's labels call for, by the rules of ``actions``.

A rule matches a label when every condition it names holds (``policy``, ``violation``,
``category``, ``confidence`` in a list); it matches an event when it matches one of the event's
labels. The first rule (in ``actions.rules`` order) that matches the event gives the action.
When none does: ``actions.on_error`` if one of the event's policies was dead-lettered, else
``actions.default``. Shadow policies never take part (they are being evaluated, not enforced).

Pure functions over :class:`~streams.wire.events.Reason` records; the output stage builds the
decision event (:mod:`streams.engine.outputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streams.config import ActionRule, ActionSettings
from streams.errors import ConfigError
from streams.wire.events import Reason


def rule_matches(rule: ActionRule, reason: Reason) -> bool:
    """Whether ``rule`` matches one label (a dead-lettered policy's reason matches no rule)."""
    if reason.violation is None:
        return False
    return ((rule.policy is None or rule.policy == reason.policy_id)
            and (rule.violation is None or rule.violation == reason.violation)
            and (rule.category is None or rule.category == reason.category)
            and (rule.confidence is None or reason.confidence in rule.confidence))


def decide(settings: ActionSettings, reasons: Sequence[Reason], *, failed: bool) -> tuple[str, int | None]:
    """(action, 1-based index of the rule that gave it, or None for on_error/default)."""
    for index, rule in enumerate(settings.rules, 1):
        if any(rule_matches(rule, r) for r in reasons):
            return rule.action, index
    return (settings.on_error if failed else settings.default), None


def check_rules(settings: ActionSettings, policies: Iterable[str]) -> None:
    """Start-up check: every policy a rule names (``actions.rules`` and ``actions.provisional.rules``)
    exists. Raises ConfigError naming the rule."""
    known = set(policies)
    groups: list[tuple[str, Sequence[Any]]] = [("actions.rules", settings.rules)]
    if settings.provisional is not None:
        groups.append(("actions.provisional.rules", settings.provisional.rules))
    for where, rules in groups:
        for index, rule in enumerate(rules, 1):
            if rule.policy is not None and rule.policy not in known:
                raise ConfigError(f"{where}[{index}] names policy {rule.policy!r}, which is not loaded "
                                  f"(policies: {', '.join(sorted(known)) or 'none'})")


def actions_of(settings: ActionSettings) -> list[str]:
    """Every action the rules can give, for the metric's children."""
    return sorted({settings.default, settings.on_error, *(r.action for r in settings.rules)})


def describe(settings: ActionSettings) -> Mapping[str, object]:
    return {"topic": settings.topic, "default": settings.default, "on_error": settings.on_error,
            "rules": len(settings.rules)}
