"""The developer tools' machine-wide cache, and what every launcher in ``streams.devtools`` shares.

Downloads (Kafka's jars, the vLLM engine's venv and models, npm tarballs) live outside the repository,
so every checkout and every CI run on a machine reuses them: ``$SAFEGUARD_CACHE_DIR``, else
``$XDG_CACHE_HOME/safeguard-streams``, else ``~/.cache/safeguard-streams``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """Where downloads and templates live: outside the repository, shared by every checkout."""
    if os.environ.get("SAFEGUARD_CACHE_DIR"):
        return Path(os.environ["SAFEGUARD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "safeguard-streams"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (parallel test workers gather or install once, not three times)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (all held open until every one is chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports
