"""The replica options ``classify`` and ``eval`` share, turned into the ``replicas`` settings section."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from streams.config import ReplicaSettings
from streams.errors import ConfigError

DEFAULT_REPLICA = "http://localhost:8000/v1"
DEFAULT_MODEL = "openai/gpt-oss-safeguard-20b"


def add_replica_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replica", action="append", metavar="URL",
                   help=f"OpenAI-compatible base URL, repeatable (default {DEFAULT_REPLICA})")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name on the replica (default {DEFAULT_MODEL})")
    p.add_argument("--effort", choices=["low", "medium", "high"],
                   help="reasoning effort of every request (default: the policy's own, else low)")
    p.add_argument("--api-key", help="bearer token for the replica")
    p.add_argument("--timeout", type=float, default=300.0, help="request timeout in seconds (default 300)")


def replica_settings(args: argparse.Namespace, *, max_attempts: int = 3) -> ReplicaSettings:
    """The ``replicas`` section from the options. Raises ConfigError on a bad URL or timeout."""
    try:
        return ReplicaSettings(urls=args.replica or [DEFAULT_REPLICA], model=args.model, api_key=args.api_key,
                               request_timeout_s=args.timeout, max_attempts=max_attempts)
    except ValidationError as exc:
        problems = "; ".join(f"--{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid replica options: {problems}") from exc
