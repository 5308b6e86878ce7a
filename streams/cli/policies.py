"""``safeguard policies lint|publish`` and ``safeguard eval``: the policy author's loop."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.replicas import add_replica_options, replica_settings
from streams.errors import ConfigError, FatalError


def add_commands(sub: Any, emit_json: Any) -> None:
    """Register ``eval`` and ``policies`` on the top-level subparsers."""
    e = sub.add_parser("eval", help="score a policy on a labelled dataset",
                       description="Run a labelled set (JSONL {\"text\", \"label\": 0|1} or CSV with those columns) "
                       "through a policy on the replicas and report precision, recall, F1 and accuracy. Unusable "
                       "answers and replica failures are counted as errors, never as negatives.")
    e.add_argument("--policy", type=Path, required=True, help="policy file (<id>.md)")
    e.add_argument("--dataset", type=Path, required=True, help="JSONL or CSV with text and label")
    add_replica_options(e)
    e.add_argument("--compare", type=Path, metavar="FILE2", help="a second policy version to score side by side")
    e.add_argument("--out", type=Path, help="write every item's verdict and rationale as JSONL")
    e.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    e.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    e.set_defaults(func=lambda a: _cmd_eval(a, emit_json))

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


def _cmd_eval(args: argparse.Namespace, emit_json: Any) -> int:
    from streams.authoring.datasets import load_dataset
    from streams.authoring.evaluate import changed_items, evaluate, score
    from streams.inference.labeler import Labeler
    from streams.inference.replicas.pool import ReplicaPool
    from streams.policy.model import load_policy

    policies = [load_policy(args.policy)] + ([load_policy(args.compare)] if args.compare else [])
    items = load_dataset(args.dataset)
    replicas = replica_settings(args)
    urls = replicas.urls
    if args.concurrency <= 0:
        raise ConfigError("--concurrency must be > 0")

    async def go() -> list[Any]:
        async with ReplicaPool(replicas, retry_limit=3) as pool:
            labeler = Labeler(pool, replicas, default_effort=args.effort or "low")
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=Console(stderr=True), transient=True) as bar:
                runs = []
                for pol in policies:
                    task = bar.add_task(f"{pol.id} {pol.version}", total=len(items))
                    runs.append(evaluate(pol, items, labeler, concurrency=args.concurrency,
                                         progress=_advance(bar, task)))
                return list(await asyncio.gather(*runs))

    runs = asyncio.run(go())
    scores = [score(r) for r in runs]
    if scores[0].errors == scores[0].n:
        first = next((r.error for r in runs[0] if r.error), "")
        raise FatalError(f"every item failed; is a replica reachable at {', '.join(urls)}? first error: {first}")
    if args.out:
        with args.out.open("wb") as fh:
            for pol, run in zip(policies, runs, strict=True):
                for r in run:
                    fh.write(orjson.dumps({"policy_id": pol.id, "policy_version": pol.version, "text": r.text,
                                           "label": r.label, "violation": r.violation, "category": r.category,
                                           "rationale": r.rationale, "error": r.error}) + b"\n")
    doc: dict[str, Any] = scores[0].as_dict()
    changed = changed_items(runs[0], runs[1]) if len(runs) == 2 else []
    if len(runs) == 2:
        doc["compare"] = scores[1].as_dict() | {"policy_version": policies[1].version}
        doc["changed"] = changed
    if args.json:
        emit_json(doc)
        return 0
    _render_scores(policies, scores, changed)
    return 0


def _advance(bar: Progress, task: Any) -> Any:
    return lambda: bar.advance(task)


def _render_scores(policies: list[Any], scores: list[Any], changed: list[dict[str, Any]]) -> None:
    con = Console()
    table = Table(title="evaluation")
    table.add_column("metric")
    for pol in policies:
        table.add_column(f"{pol.id} {pol.version}", justify="right")
    for key in ("n", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "accuracy", "errors"):
        table.add_row(key, *(str(getattr(s, key)) for s in scores))
    con.print(table)
    if changed:
        diff = Table(title=f"{len(changed)} items changed verdict")
        for col in ("label", "a", "b", "text"):
            diff.add_column(col)
        for c in changed[:50]:
            diff.add_row(str(c["label"]), str(c["a"]), str(c["b"]), escape(c["text"][:100]))
        con.print(diff)
