"""The live set of policies and the routing over them, updated without a restart.

Updates arrive from the policies directory (:class:`DirectoryWatcher`) or the compacted policies
topic (:class:`streams.policy.topic.PolicyTopicReader`); the last update wins whatever its source.
Each update is validated as a whole before it replaces anything: a policy that does not parse, whose
id does not match its key or file name, or whose removal would leave a route pointing nowhere is
rejected with a logged reason, and the previous version keeps serving.

Versions are captured per request: an event routed before an update finishes under the
:class:`Policy` object it was given; events routed afterwards get the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from streams.config import Route
from streams.errors import ConfigError
from streams.policy.model import Policy, parse_policy, policy_files
from streams.policy.routing import Router

log = logging.getLogger(__name__)

ChangeHook = Callable[[Policy | None, Policy | None], None]  # (old, new); new None = deleted


class PolicyRegistry:
    """Current policies plus a router rebuilt on every accepted change."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        routes: Sequence[Route],
        default: Sequence[str],
        *,
        on_change: ChangeHook | None = None,
        accept: Callable[[Policy], str | None] | None = None,
    ) -> None:
        self._routes = list(routes)
        self._default = list(default)
        self._policies = dict(policies)
        self._router = Router(self._policies, self._routes, self._default)
        self._on_change = on_change
        self._accept = accept
        self.rejected = 0

    @property
    def policies(self) -> Mapping[str, Policy]:
        return self._policies

    def resolve(self, *, topic: str, kind: str, requested: Iterable[str] | None) -> list[Policy]:
        return self._router.resolve(topic=topic, kind=kind, requested=requested)

    def lane(self, topic: str, kind: str) -> int:
        return self._router.lane(topic, kind)

    def topic_lane(self, topic: str) -> int:
        return self._router.topic_lane(topic)

    def upsert(self, text: str, *, source: str, expected_id: str | None = None) -> Policy | None:
        """Validate and install a policy text. Returns the new policy, None if unchanged.

        Raises:
            ConfigError: the update is invalid; nothing changed.
        """
        policy = parse_policy(text, path=Path(source))
        if expected_id is not None and policy.id != expected_id:
            raise ConfigError(f"{source}: policy id {policy.id!r} does not match its key/file {expected_id!r}")
        if self._accept is not None and (reason := self._accept(policy)):
            raise ConfigError(f"{source}: {reason}")
        old = self._policies.get(policy.id)
        if old is not None and old.version == policy.version and old.meta == policy.meta:
            return None
        self._swap({**self._policies, policy.id: policy})
        log.info("policy updated policy=%s version=%s previous=%s source=%s",
                 policy.id, policy.version, old.version if old else None, source)
        if self._on_change is not None:
            self._on_change(old, policy)
        return policy

    def delete(self, policy_id: str, *, source: str) -> bool:
        """Remove a policy. Raises ConfigError if a route or the default still names it."""
        old = self._policies.get(policy_id)
        if old is None:
            return False
        remaining = {k: v for k, v in self._policies.items() if k != policy_id}
        try:
            self._swap(remaining)
        except ConfigError as exc:
            raise ConfigError(f"{source}: cannot delete policy {policy_id!r}: {exc}") from exc
        log.info("policy deleted policy=%s version=%s source=%s", policy_id, old.version, source)
        if self._on_change is not None:
            self._on_change(old, None)
        return True

    def apply(self, policy_id: str, text: str | None, *, source: str) -> None:
        """Upsert or delete, logging (not raising) a rejected update so the old version keeps serving."""
        try:
            if text is None:
                self.delete(policy_id, source=source)
            else:
                self.upsert(text, source=source, expected_id=policy_id)
        except ConfigError as exc:
            self.rejected += 1
            log.error("policy update rejected, previous version keeps serving: %s", exc)

    def _swap(self, policies: dict[str, Policy]) -> None:
        router = Router(policies, self._routes, self._default)  # raises before anything changes
        self._policies, self._router = policies, router


class DirectoryWatcher:
    """Polls ``policies.dir`` for added, changed and removed ``<id>.md`` files."""

    def __init__(self, directory: Path, registry: PolicyRegistry, interval_s: float) -> None:
        self._dir = directory
        self._registry = registry
        self._interval = interval_s
        self._seen = self._snapshot()

    def _snapshot(self) -> dict[Path, tuple[int, int]]:
        out = {}
        for path in policy_files(self._dir):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out[path] = (st.st_mtime_ns, st.st_size)
        return out

    def scan(self) -> None:
        """Apply every change since the last scan."""
        try:
            now = self._snapshot()
        except ConfigError as exc:
            log.error("cannot scan policies directory: %s", exc)
            return
        for path, stamp in now.items():
            if self._seen.get(path) != stamp:
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    log.error("policy update rejected, cannot read %s: %s", path, exc)
                    continue
                self._registry.apply(path.stem, text, source=str(path))
        for path in self._seen.keys() - now.keys():
            self._registry.apply(path.stem, None, source=str(path))
        self._seen = now

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.scan()
