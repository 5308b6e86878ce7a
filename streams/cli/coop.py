"""``safeguard coop callbacks|reports``: the two Coop services (docs/integrations.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streams.cli.args import positive_float


def add_command(sub: Any) -> None:
    """Register ``coop`` (callbacks, reports) on the top-level subparsers."""
    p = sub.add_parser("coop", help="Coop (ROOST's review tool): reports out, moderators' decisions back in")
    csub = p.add_subparsers(title="coop commands", metavar="COMMAND")
    cb = csub.add_parser("callbacks", help="receive Coop's signed action callbacks as review events",
                         description="Serve an HTTP endpoint for Coop's action callbacks (set its URL on the Coop "
                         "actions whose decisions you want back). A callback whose coop-signature does not verify "
                         "against integrations.coop.callback_secret (Coop's public key) is answered 401 and "
                         "nothing is produced; a verified one becomes a review event on "
                         "integrations.coop.reviews_topic, which eval and prefilter train read with "
                         "--from-reviews. Prints {\"port\": P} on stdout once listening.")
    cb.add_argument("--config", type=Path, help="YAML config file (kafka, integrations.coop)")
    cb.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")
    cb.set_defaults(func=_cmd_callbacks)
    rp = csub.add_parser("reports", help="send the reports and items the consumer wrote to Coop",
                         description="Read integrations.coop.outbox_topic (written by safeguard run when "
                         "integrations.coop.url is set) and POST each report (decisions whose action is in "
                         "report_actions) and item (submit_items) to Coop, in order, committing each once Coop "
                         "has answered. 429/5xx/no answer: waits and retries (capped Retry-After, else backoff), "
                         "nothing skipped; another 4xx: a dead letter integration_rejected with Coop's answer. "
                         "Group <kafka.group_id>-coop. SIGTERM finishes the request under way and exits 0.")
    rp.add_argument("--config", type=Path, help="YAML config file (kafka, integrations.coop)")
    rp.add_argument("--until-idle", type=positive_float, metavar="SECONDS",
                    help="exit 0 once nothing arrived for SECONDS (after assignment)")
    rp.set_defaults(func=_cmd_reports)


def _cmd_callbacks(args: argparse.Namespace) -> int:
    from streams.app import run
    from streams.config import load_settings
    from streams.errors import ConfigError
    from streams.integrations.callbacks import run_callbacks

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    run(run_callbacks(load_settings(args.config), port=args.port))
    return 0


def _cmd_reports(args: argparse.Namespace) -> int:
    from streams.app import run
    from streams.config import load_settings
    from streams.integrations.coop_sender import run_coop_reports

    run(run_coop_reports(load_settings(args.config), until_idle=args.until_idle))
    return 0
