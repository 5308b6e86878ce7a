"""The prefilters in ``prefilter.dir``, loaded and reloaded while the consumer runs.

Every ``*.prefilter`` file of the directory is read (:func:`streams.cascade.model.load_prefilter`)
and trusted only for the stamp inside it: the policy id and the exact policy version it was
trained for. :meth:`Prefilters.current` hands out a prefilter only when that version is the
policy's current one, so an edited policy goes back to the model for every event until a
prefilter is trained for the new text (a prefilter never outlives the text it learned). A file
that cannot be read (corrupt, foreign, a pickle, a newer format) is rejected with its reason,
logged once per change of the file; the policy keeps working without a prefilter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from streams.cascade.model import SUFFIX, Prefilter, load_prefilter
from streams.errors import ConfigError
from streams.ops.metrics import Metrics
from streams.policy.model import Policy

log = logging.getLogger(__name__)


class Prefilters:
    """Prefilters by policy id, from one directory."""

    def __init__(self, directory: Path, metrics: Metrics | None = None) -> None:
        self._dir = directory
        self._metrics = metrics
        self._files: dict[Path, tuple[tuple[int, int], Prefilter | None]] = {}  # stamp, loaded (None: rejected)
        self._by_policy: dict[str, list[Prefilter]] = {}
        self._stale_logged: set[tuple[str, str, str]] = set()

    def current(self, policy: Policy) -> Prefilter | None:
        """The prefilter trained for this exact policy version, or None (then the model decides)."""
        candidates = self._by_policy.get(policy.id)
        if not candidates:
            return None
        for prefilter in candidates:
            if prefilter.policy_version == policy.version:
                return prefilter
        for prefilter in candidates:
            key = (prefilter.source, prefilter.policy_version, policy.version)
            if key not in self._stale_logged:
                self._stale_logged.add(key)
                log.warning("prefilter ignored: trained for another policy version policy=%s prefilter_version=%s "
                            "policy_version=%s file=%s (train one for the current text)", policy.id,
                            prefilter.policy_version, policy.version, prefilter.source)
        return None

    def loaded(self) -> list[Prefilter]:
        return [p for ps in self._by_policy.values() for p in ps]

    def scan(self) -> None:
        """Load new and changed files, forget removed ones."""
        try:
            paths = sorted(self._dir.glob(f"*{SUFFIX}"))
        except OSError as exc:
            log.error("cannot scan prefilter directory %s: %s", self._dir, exc)
            return
        seen: dict[Path, tuple[tuple[int, int], Prefilter | None]] = {}
        for path in paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            old = self._files.get(path)
            if old is not None and old[0] == stamp:
                seen[path] = old
                continue
            try:
                prefilter: Prefilter | None = load_prefilter(path)
            except ConfigError as exc:
                log.error("prefilter rejected, the policy is decided by the model alone: %s", exc)
                prefilter = None
            else:
                assert prefilter is not None
                log.info("prefilter loaded policy=%s version=%s threshold=%.3f file=%s", prefilter.policy_id,
                         prefilter.policy_version, prefilter.threshold, path)
            seen[path] = (stamp, prefilter)
        for path in self._files.keys() - seen.keys():
            log.info("prefilter removed file=%s", path)
        self._files = seen
        by_policy: dict[str, list[Prefilter]] = {}
        for _, prefilter in sorted(seen.values(), key=lambda entry: entry[0][0], reverse=True):  # newest first
            if prefilter is not None:
                by_policy.setdefault(prefilter.policy_id, []).append(prefilter)
        self._publish(by_policy)
        self._by_policy = by_policy

    def _publish(self, by_policy: dict[str, list[Prefilter]]) -> None:
        if self._metrics is None:
            return
        gauge = self._metrics.prefilter_info
        old = {(p.policy_id, p.policy_version) for p in self.loaded()}
        new = {(p.policy_id, p.policy_version) for ps in by_policy.values() for p in ps}
        for labels in old - new:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        for labels in new:
            gauge.labels(*labels).set(1)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.scan()
