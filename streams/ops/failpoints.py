"""Failpoints: named places where a test makes the process stop itself (SIGSTOP), so that a crash
test can SIGKILL it at that exact point of its work rather than whenever a timer fires.

Set ``STREAMS_FAILPOINTS`` (not a ``SAFEGUARD_`` variable: those are settings) to a comma-separated
list of names in the process's environment (the crash tests do, for one life of a consumer); unset,
as in production, :func:`stop_here` is one set lookup. A process stopped at a failpoint logs one
line naming it first, then waits for SIGKILL (or SIGCONT, which lets it go on).

Names in use:
- ``eos-offsets-sent``: exactly-once, the input offsets are in the open transaction and the
  transaction is not committed yet (``streams.engine.delivery.strategies.ExactlyOnce``).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "STREAMS_FAILPOINTS"
ACTIVE = frozenset(name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip())


def stop_here(name: str) -> None:
    """Stop this process (SIGSTOP to itself) if the failpoint ``name`` is active."""
    if name in ACTIVE:
        log.warning("failpoint %s reached: stopping (SIGSTOP) until killed or continued", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
