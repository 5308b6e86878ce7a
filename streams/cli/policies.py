"""``safeguard policies lint|publish|configmap``: checking and shipping policy files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from streams.errors import ConfigError


def add_commands(sub: Any) -> None:
    """Register ``policies`` (lint, publish, configmap) on the top-level subparsers."""
    p = sub.add_parser("policies", help="lint and publish policies")
    psub = p.add_subparsers(title="policies commands", metavar="COMMAND")
    lint = psub.add_parser("lint", help="validate policy files",
                           description="Check front matter, required sections, the output-format instruction "
                           "(present and repeated), estimated length, example labels and golden sets. Exit 1 on "
                           "any error; warnings do not fail.")
    lint.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_FILE")
    lint.set_defaults(func=_cmd_lint)
    pub = psub.add_parser("publish", help="write policies to the compacted policies topic",
                          description="Lint, then publish each file (key = policy id, value = file text) to "
                          "kafka.policies_topic; running consumers pick them up within seconds. --delete "
                          "publishes a tombstone.")
    pub.add_argument("files", nargs="*", type=Path, metavar="FILE")
    pub.add_argument("--delete", action="append", default=[], metavar="ID", help="publish a tombstone for ID")
    pub.add_argument("--config", type=Path, help="YAML config (kafka.bootstrap_servers, kafka.policies_topic)")
    pub.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")
    pub.add_argument("--topic", help="override kafka.policies_topic")
    pub.set_defaults(func=_cmd_publish)
    cm = psub.add_parser("configmap", help="print policy files as a Kubernetes ConfigMap",
                         description="Render every policy file of DIR (lint-clean) as one ConfigMap for "
                         "policies.dir; `make k8s` regenerates k8s/base/policies.yaml with it.")
    cm.add_argument("dir", type=Path, metavar="DIR")
    cm.add_argument("--name", default="safeguard-policies", help="ConfigMap name")
    cm.set_defaults(func=_cmd_configmap)


def _cmd_lint(args: argparse.Namespace) -> int:
    from streams.authoring.lint import lint_paths

    con = Console()
    results = lint_paths(args.paths)
    errors = 0
    for r in results:
        status = "[red]FAIL[/]" if r.errors else "[green]ok[/]"
        version = r.policy.version if r.policy else "-"
        con.print(f"{status} {escape(str(r.path))}  version={version} ~{r.tokens} tokens", highlight=False)
        for msg in r.errors:
            con.print(f"  [red]error:[/] {escape(msg)}", highlight=False)
        for msg in r.warnings:
            con.print(f"  [yellow]warning:[/] {escape(msg)}", highlight=False)
        errors += len(r.errors)
    if not results:
        con.print("[red]no policy files found[/]")
        return 1
    con.print(f"{len(results)} policies, {errors} errors, {sum(len(r.warnings) for r in results)} warnings")
    return 1 if errors else 0


def _cmd_configmap(args: argparse.Namespace) -> int:
    import sys

    from streams.authoring.configmap import policies_configmap

    sys.stdout.write(policies_configmap(args.dir, args.name))
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from streams.authoring.lint import lint_policy
    from streams.config import load_settings
    from streams.policy.topic import publish_policies

    overrides: dict[str, Any] = {"kafka": {}}
    if args.bootstrap_servers:
        overrides["kafka"]["bootstrap_servers"] = args.bootstrap_servers
    if args.topic:
        overrides["kafka"]["policies_topic"] = args.topic
    settings = load_settings(args.config, overrides)
    if not args.files and not args.delete:
        raise ConfigError("nothing to publish: give policy files and/or --delete ID")
    records: list[tuple[str, bytes | None]] = []
    for path in args.files:
        result = lint_policy(path)
        if result.errors or result.policy is None:
            raise ConfigError(f"{path} does not pass lint: {'; '.join(result.errors)}")
        records.append((result.policy.id, path.read_bytes()))
    records += [(pid, None) for pid in args.delete]
    publish_policies(settings.kafka, records)
    Console().print(f"published {len(records)} record(s) to {settings.kafka.policies_topic}: "
                    + ", ".join(pid + (" (deleted)" if v is None else "") for pid, v in records), highlight=False)
    return 0
