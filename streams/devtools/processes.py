"""Child processes of the dev tools (brokers, engines, simulators) that do not outlive their parent.

A test run killed from outside (a CI timeout, SIGKILL, a closed terminal) runs no fixture teardown:
its Kafka JVM (512 MB heap) or vLLM engine (GBs) used to live on, holding ports and memory until the
machine restarted. ``setpriv --pdeathsig`` (util-linux, on every Debian-like system) asks the kernel
to send SIGTERM to the child when the thread that started it exits; without setpriv the command
runs as before.
"""

from __future__ import annotations

import shutil


def dies_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so that the process gets SIGTERM when its parent exits (see the module doc).
    Start it from a thread that lives as long as the process should (the main thread)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else list(cmd)
