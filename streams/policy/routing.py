"""Routing: which policies an event is classified against.

The event's own ``policies`` list wins; otherwise the first route whose ``topic`` and ``kind`` (each
optional) match; otherwise ``policies.default``. An event nothing routes is dead-lettered
(``no_policy``), never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from streams.config import Route
from streams.errors import ConfigError, ErrorType, PoisonError
from streams.policy.model import Policy

DEFAULT_PRIORITY = 1


class Router:
    """Chooses the policies an event is classified against."""

    def __init__(self, policies: Mapping[str, Policy], routes: Sequence[Route], default: Sequence[str]) -> None:
        self._policies = policies
        self._routes = list(routes)
        self._default = list(default)
        missing = {pid for r in self._routes for pid in r.policies} | set(self._default)
        missing -= set(policies)
        if missing:
            raise ConfigError(f"routes or policies.default name unknown policies: {sorted(missing)}")

    def resolve(self, *, topic: str, kind: str, requested: Iterable[str] | None) -> list[Policy]:
        """Policies for one event.

        Raises:
            PoisonError: ``unknown_policy`` if the event names a policy we do not have, ``no_policy``
                if nothing routes the event (so it is visible in the dead-letter topic, not lost).
        """
        if requested:
            ids = list(dict.fromkeys(requested))
            unknown = [pid for pid in ids if pid not in self._policies]
            if unknown:
                raise PoisonError(ErrorType.UNKNOWN_POLICY, f"event names unknown policies: {unknown}")
        else:
            ids = self._route(topic, kind)
            if not ids:
                raise PoisonError(
                    ErrorType.NO_POLICY, f"no route matches topic={topic} kind={kind} and policies.default is empty"
                )
        return [self._policies[pid] for pid in ids]

    def lane(self, topic: str, kind: str) -> int:
        """The event's lane: the priority of the first route that matches it (lower is sooner), the
        default 1 when none does."""
        for route in self._routes:
            if (route.topic is None or route.topic == topic) and (route.kind is None or route.kind == kind):
                return route.priority
        return DEFAULT_PRIORITY

    def topic_lane(self, topic: str) -> int:
        """A topic's lane, for pausing whole partitions: the most urgent priority among the routes
        that can match its events (a route naming the topic, or naming none)."""
        lanes = [r.priority for r in self._routes if r.topic is None or r.topic == topic]
        return min(lanes) if lanes else DEFAULT_PRIORITY

    def _route(self, topic: str, kind: str) -> list[str]:
        for route in self._routes:
            if (route.topic is None or route.topic == topic) and (route.kind is None or route.kind == kind):
                return list(route.policies)
        return self._default
