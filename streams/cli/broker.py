"""``safeguard broker``: a local broker for anyone without a cluster at hand (docs/development.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from streams.cli.args import BROKER_KINDS
from streams.errors import FatalError

log = logging.getLogger(__name__)


def add_command(sub: Any, emit_json: Callable[[dict[str, Any]], None]) -> None:
    
    b = sub.add_parser(
        "broker", help="a local broker (Apache Kafka from Maven Central, or the embedded one) until Ctrl-C",
        description="Start a local single-node broker on loopback and keep it until SIGTERM/SIGINT, then stop "
        "it cleanly (exit 0). Once it serves, one JSON line goes to stdout: {\"bootstrap\": \"127.0.0.1:P\", "
        "\"kind\": \"kafka\", \"version\": \"4.x.y\"}. kafka: a real Apache Kafka KRaft node (Java 17; the first "
        "start gathers its jars with Maven into ~/.cache/safeguard-streams, offline after that). embedded: the "
        "Tansu broker of the demo (no Java, memory only, not faithful to transactions). Not for production.")
    b.add_argument("--kind", choices=BROKER_KINDS,
                   help="kafka (default where Java and Maven or the cached jars are present) or embedded")
    b.add_argument("--port", type=int, help="listener port (default: a free one)")
    b.add_argument("--json", action="store_true", help="only the JSON line on stdout, no human summary on stderr")
    b.set_defaults(func=lambda args: _cmd_broker(args, emit_json))


def _cmd_broker(args: argparse.Namespace, emit_json: Callable[[dict[str, Any]], None]) -> int:
    from streams.devtools.broker import default_kind, local_broker

    kind = args.kind or default_kind()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping the broker", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    broker = local_broker(kind, port=args.port)
    if not args.json:
        log.info("starting a local %s broker (the first kafka start downloads its jars: about a minute)", kind)
    broker.start()
    try:
        emit_json({"bootstrap": broker.bootstrap, "kind": broker.kind, "version": broker.version})
        if not args.json:
            sys.stderr.write(f"{broker.version} serving at {broker.bootstrap} (log {broker.log_path}); "
                             "Ctrl-C or SIGTERM stops it\n")
        while not stop.wait(0.5):
            if not broker.running:
                raise FatalError(f"the broker exited on its own; its log: {broker.log_path}")
    finally:
        broker.stop()
    log.info("broker stopped")
    return 0
