"""Log lines that can come in floods (a dead replica fails hundreds of requests at once, a poison
burst dead-letters thousands of events) are limited per key, with a count of what was held back."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable


class RateLimitedLog:
    """At most one line per key per ``interval_s``; the next line says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0) -> None:
        self._log = logger
        self._interval = interval_s
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            msg += " (%d similar suppressed)"
            args = (*args, held)
        self._log.log(level, msg, *args)
