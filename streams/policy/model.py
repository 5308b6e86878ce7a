"""Policies: developer-written text the model reads at inference time (docs/policies.md).

A policy file is ``<id>.md``: YAML front matter, then the policy text sent as the system message.
Its version string is ``"<version>-<first 8 hex of sha256(body)>"`` so any edit to the text changes
the version carried by labels, even when the author forgets to bump ``version``.

The starter pack (the project's top-level ``policies/``) ships inside this package as
:data:`STARTER_POLICIES`, with a golden set per policy.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.config import Kind
from streams.errors import ConfigError

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*\r?\n?(.*)\Z", re.DOTALL)
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
STARTER_POLICIES = Path(__file__).resolve().parent / "starter"


class PolicyMeta(BaseModel):
    """Front matter of a policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    version: int = Field(1, ge=0)
    title: str | None = None
    description: str | None = None
    kinds: list[Kind] = Field(default_factory=list)
    output: Literal["json", "binary"] = "json"
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    shadow: bool = False
    source: str | None = None  # where the policy came from (an imported pack: its path and file)
    assumptions: list[str] = Field(default_factory=list)  # what an import had to assume (lint repeats them)


@dataclass(frozen=True)
class Policy:
    """A loaded policy: metadata, the text the model reads, and its version string."""

    meta: PolicyMeta
    body: str
    path: Path | None = None
    version: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.body.encode("utf-8")).hexdigest()[:8]
        object.__setattr__(self, "version", f"{self.meta.version}-{digest}")

    @property
    def id(self) -> str:
        return self.meta.id

    def effort(self, default: str) -> str:
        return self.meta.reasoning_effort or default


def parse_policy(text: str, *, path: Path | None = None) -> Policy:
    """Parse policy file text (front matter + body).

    Raises:
        ConfigError: no front matter, bad YAML, unknown or invalid keys, bad id, empty body.
    """
    where = str(path) if path else "policy"
    match = _FRONT_MATTER.match(text.lstrip("\ufeff"))
    if not match:
        raise ConfigError(f"{where}: missing YAML front matter (a '---' block at the top)")
    try:
        raw = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: front matter is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: front matter must be a mapping")
    try:
        meta = PolicyMeta(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"{where}: invalid front matter: {problems}") from exc
    if not _ID.match(meta.id):
        raise ConfigError(f"{where}: policy id {meta.id!r} must be lowercase letters, digits, '.', '_' or '-'")
    body = match.group(2).strip()
    if not body:
        raise ConfigError(f"{where}: policy text is empty")
    return Policy(meta=meta, body=body + "\n", path=path)


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read policy {path}: {exc}") from exc
    policy = parse_policy(text, path=path)
    if path.stem != policy.id:
        raise ConfigError(f"{path}: file name must be '<id>.md' (front matter id is {policy.id!r})")
    return policy


def policy_files(directory: Path) -> list[Path]:
    """Policy files in a directory (``*.md`` except README.md), sorted for stable behaviour."""
    if not directory.is_dir():
        raise ConfigError(f"policies directory not found: {directory}")
    return sorted(p for p in directory.glob("*.md") if p.name.lower() != "readme.md")


def load_policies(directory: Path) -> dict[str, Policy]:
    """Load every policy in ``directory``. Raises ConfigError on the first bad file or duplicate id."""
    policies: dict[str, Policy] = {}
    for path in policy_files(directory):
        policy = load_policy(path)
        if policy.id in policies:
            raise ConfigError(f"duplicate policy id {policy.id!r} in {path}")
        policies[policy.id] = policy
    return policies
