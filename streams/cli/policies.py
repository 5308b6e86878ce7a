"""``safeguard policies lint|publish|configmap|import``: checking, shipping and importing policy files."""

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
    imp = psub.add_parser("import", help="turn a ROOST Model Community policy pack into policy files and datasets",
                          description="Read a ROOST policy pack as published (policy.md files whose categories end "
                          "in 'Output: `VALID`'/'Output: `INVALID`' with datasets/<slug>.csv validation sets, or a "
                          "policy with '(Remove)'/'(Permit)' sections) and write <id>.md policy files (the pack's "
                          "text under our sections, labels mapped to our JSON answer) and <id>.golden.jsonl "
                          "datasets that lint, eval and prefilter train read. What had to be assumed is written "
                          "in each file's front matter, and lint repeats it.")
    imp.add_argument("dir", type=Path, metavar="DIR", help="the pack (or a folder of packs, or one policy file)")
    imp.add_argument("--out", type=Path, default=Path("imported-policies"),
                     help="directory to write into (default ./imported-policies)")
    imp.add_argument("--force", action="store_true", help="overwrite files that already exist in --out")
    imp.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    imp.set_defaults(func=_cmd_import)


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


def _cmd_import(args: argparse.Namespace) -> int:
    import orjson

    from streams.authoring.packs import import_pack, write_pack

    policies = import_pack(args.dir)
    if not args.force:
        clash = [str(args.out / name) for p in policies for name in (f"{p.id}.md", f"{p.id}.golden.jsonl")
                 if (args.out / name).exists()]
        if clash:
            raise ConfigError(f"would overwrite {', '.join(clash)}; give --force, or another --out")
    write_pack(policies, args.out)
    if args.json:
        print(orjson.dumps({"out": str(args.out), "policies": [
            {"id": p.id, "source": str(p.source), "dataset": str(p.dataset) if p.dataset else None,
             "items": len(p.golden), "labelled": p.labelled, "left_out": p.problems, "assumptions": p.assumptions}
            for p in policies]}).decode())
        return 0
    con = Console()
    for p in policies:
        golden = f", {len(p.golden)} items ({p.labelled} labelled) from {p.dataset.name}" if p.dataset else ""
        con.print(f"[green]imported[/] {escape(p.id)} from {escape(str(p.source))}{escape(golden)}", highlight=False)
        for problem in p.problems:
            con.print(f"  [yellow]left out:[/] {escape(problem)}", highlight=False)
        con.print(f"  {len(p.assumptions)} assumptions (in the front matter; `safeguard policies lint` lists them)",
                  highlight=False)
    con.print(f"{len(policies)} policies written to {escape(str(args.out))}; next: safeguard policies lint "
              f"{escape(str(args.out))}", highlight=False)
    return 0


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
