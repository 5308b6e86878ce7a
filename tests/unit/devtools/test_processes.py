"""A dev tool's child (broker, engine, simulator) does not outlive a parent killed without teardown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.devtools.processes import dies_with_parent


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_a_child_started_by_a_parent_that_is_killed_gets_sigterm() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"child = subprocess.Popen({dies_with_parent(['sleep', '600'])!r}, start_new_session=True)\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 30  # setpriv sets the signal, then execs the command (same pid)
    while "(sleep)" not in Path(f"/proc/{child}/stat").read_text() and time.monotonic() < deadline:
        time.sleep(0.01)  # a parent killed before that instant leaves the child running (setpriv's own race)
    parent.send_signal(signal.SIGKILL)
    parent.wait(30)
    deadline = time.monotonic() + 30  # a bound; the kernel signals at once
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break  # gone (reaped by init)
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":  # dead, waiting for init to reap it
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


def test_without_setpriv_the_command_runs_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert dies_with_parent(["java", "-version"]) == ["java", "-version"]
