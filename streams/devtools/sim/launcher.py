"""Start simulated replicas as subprocesses (demo, tests, bench): each gets its own CPU, like a GPU
server would, so the consumer's measured CPU is its own."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from streams.devtools.broker import free_port
from streams.devtools.processes import dies_with_parent
from streams.errors import FatalError
from streams.inference.replicas.client import root_url


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 120.0) -> None:
    """Block until ``GET /health`` answers 200 (``url`` is the ``/v1`` base). A simulator that exits
    fails at once; the timeout only bounds one that hangs (a start takes about a second on an idle
    machine, and was seen to take over 20 s with the load average above 20)."""
    root = root_url(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FatalError(f"replica simulator for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(root + "/health", timeout=1) as resp:  # noqa: S310 - loopback URL
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise FatalError(f"replica simulator at {url} not healthy after {timeout_s}s")


class SimProcesses:
    """``count`` ``safeguard replica-sim`` subprocesses on free loopback ports; a context manager."""

    def __init__(self, count: int, *, answer_key: Path | None = None, time_scale: float = 1.0,
                 profile: str = "gpt-oss-safeguard-20b@h100", extra_args: list[str] | None = None) -> None:
        self.count = count
        self.urls: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self._answer_key = answer_key
        self._time_scale = time_scale
        self._profile = profile
        self._extra = extra_args or []

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "streams", "--log-level", "warning", "replica-sim", "--port", str(port),
               "--time-scale", str(self._time_scale), "--profile", self._profile, *self._extra]
        if self._answer_key is not None:
            cmd += ["--answer-key", str(self._answer_key)]
        return cmd

    def start_one(self, index: int) -> None:
        """(Re)start replica ``index`` on its port."""
        proc = subprocess.Popen(dies_with_parent(self.command(self.ports[index])))
        self.procs[index] = proc
        wait_healthy(self.urls[index], proc)

    def kill(self, index: int) -> None:
        self.procs[index].kill()
        self.procs[index].wait()

    def __enter__(self) -> SimProcesses:
        for _ in range(self.count):
            port = free_port()
            self.ports.append(port)
            self.urls.append(f"http://127.0.0.1:{port}/v1")
            self.procs.append(subprocess.Popen(dies_with_parent(self.command(port))))
        for url, proc in zip(self.urls, self.procs, strict=True):
            wait_healthy(url, proc)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
