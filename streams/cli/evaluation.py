"""``safeguard eval``: score policies on a labelled dataset (the published formats included)."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.authoring.datasets import FORMATS
from streams.cli.replicas import add_replica_options, replica_settings
from streams.errors import ConfigError, FatalError

SCORE_KEYS = ("n", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "accuracy", "errors", "skipped")


def add_command(sub: Any, emit_json: Any) -> None:
    e = sub.add_parser(
        "eval", help="score policies on a labelled dataset",
        description="Run a labelled set through one or several policies on the replicas and report precision, "
        "recall, F1 and accuracy per policy (with several: the overall figures and multi-policy accuracy, an item "
        "counting only when every policy's verdict matches gold). Formats: JSONL {\"text\", \"label\": 0|1} or "
        "{\"text\", \"labels\": {policy_id: 0|1}}, CSV with text and label columns, the ToxicChat annotation CSV, "
        "and the 2022 OpenAI moderation JSONL (with --category). Unusable answers and replica failures count as "
        "errors, unknown labels as skipped; neither is ever scored as a negative.")
    e.add_argument("--policy", type=Path, action="append", required=True, metavar="FILE",
                   help="policy file (<id>.md); repeat for several policies")
    e.add_argument("--dataset", type=Path, help="the labelled set (.gz is read too); or --from-reviews")
    e.add_argument("--from-reviews", action="store_true",
                   help="score against moderators' decisions instead: the review events on "
                   "integrations.coop.reviews_topic (safeguard coop callbacks), with the content read back from "
                   "Kafka; needs --config")
    e.add_argument("--config", type=Path, help="consumer config, for --from-reviews (Kafka, topics, input format)")
    e.add_argument("--format", choices=FORMATS, default="auto",
                   help="dataset layout (default auto: detected from the file)")
    e.add_argument("--category", action="append", default=[], metavar="CODE[=POLICY_ID]",
                   help="2022 moderation set: which label to score (S, H, V, HR, SH, S3, H2, V2); with several "
                   "policies, CODE=POLICY_ID for each")
    e.add_argument("--mode", choices=["separate", "combined"], default="separate",
                   help="one request per (item, policy), or one per item for all the policies (default separate)")
    add_replica_options(e)
    e.add_argument("--compare", type=Path, metavar="FILE2", help="a second version of the (one) policy, side by side")
    e.add_argument("--out", type=Path, help="write every item's verdict, rationale and reasoning as JSONL")
    e.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    e.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    e.set_defaults(func=lambda a: _cmd_eval(a, emit_json))


def _cmd_eval(args: argparse.Namespace, emit_json: Any) -> int:
    from streams.authoring.datasets import load_dataset, parse_categories
    from streams.authoring.evaluate import Evaluation, changed_items, evaluate, requests_needed
    from streams.inference.labeler import Labeler
    from streams.inference.replicas.pool import ReplicaPool
    from streams.policy.model import load_policy

    policies = [load_policy(p) for p in args.policy]
    ids = [p.id for p in policies]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--policy names the same policy id twice: {ids}")
    if args.compare and len(policies) > 1:
        raise ConfigError("--compare compares two versions of one policy: give a single --policy")
    categories = parse_categories(args.category)
    unknown = sorted({p for p in categories.values() if p is not None} - set(ids))
    if unknown:
        raise ConfigError(f"--category names policies that are not evaluated: {unknown}")
    if len(policies) > 1 and None in categories.values():
        raise ConfigError("with several --policy, give --category CODE=POLICY_ID for each policy")
    if args.concurrency <= 0:
        raise ConfigError("--concurrency must be > 0")
    if (args.dataset is None) == (not args.from_reviews):
        raise ConfigError("give --dataset FILE or --from-reviews (with --config), one of them")
    if args.from_reviews:
        from streams.authoring.reviews import dataset_from_reviews
        from streams.config import load_settings

        if args.config is None:
            raise ConfigError("--from-reviews needs --config (the consumer's: Kafka, topics, input format)")
        data = dataset_from_reviews(load_settings(args.config), ids)
    else:
        data = load_dataset(args.dataset, args.format, categories=categories)  # a bad row stops here
    versions = [policies] + ([[load_policy(args.compare)]] if args.compare else [])
    replicas = replica_settings(args)

    async def go() -> list[Evaluation]:
        async with ReplicaPool(replicas, retry_limit=3) as pool:
            labeler = Labeler(pool, replicas, default_effort="low", effort=args.effort)
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=Console(stderr=True), transient=True) as bar:
                runs = []
                for pols in versions:
                    name = " + ".join(f"{p.id} {p.version}" for p in pols)
                    task = bar.add_task(name, total=requests_needed(pols, data.items, args.mode))
                    runs.append(evaluate(pols, data.items, labeler, concurrency=args.concurrency, mode=args.mode,
                                         progress=_advance(bar, task)))
                return list(await asyncio.gather(*runs))

    runs = asyncio.run(go())
    first = runs[0]
    if first.results and all(r.violation is None for r in first.results):
        error = next((r.error for r in first.results if r.error), "")
        raise FatalError(f"every item failed; is a replica reachable at {', '.join(replicas.urls)}? "
                         f"first error: {error}")
    if args.out:
        _write_results(args.out, runs)
    doc = first.report() | {"format": data.format, "mode": args.mode}
    if data.unlabelled:
        doc["unlabelled_rows"] = data.unlabelled
    changed: list[dict[str, Any]] = []
    if args.compare:
        changed = changed_items(first.results, runs[1].results)
        doc["compare"] = runs[1].report() | {"policy_version": runs[1].policies[0].version}
        doc["changed"] = changed
    if args.json:
        emit_json(doc)
        return 0
    _render(runs, doc, changed)
    return 0


def _advance(bar: Progress, task: Any) -> Any:
    return lambda: bar.advance(task)


def _write_results(path: Path, runs: list[Any]) -> None:
    """Every result as JSONL, written whole or not at all (a temporary file renamed at the end)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            for run in runs:
                versions = {p.id: p.version for p in run.policies}
                for r in run.results:
                    fh.write(orjson.dumps({
                        "index": r.index, "where": r.where, "policy_id": r.policy_id,
                        "policy_version": versions[r.policy_id], "text": r.text, "label": r.label,
                        "violation": r.violation, "category": r.category, "rationale": r.rationale,
                        "reasoning": r.reasoning, "error": r.error}) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _render(runs: list[Any], doc: dict[str, Any], changed: list[dict[str, Any]]) -> None:
    con = Console()
    columns: list[tuple[str, Any]] = []
    for run in runs:
        for pid, scores in run.per_policy().items():
            version = next(p.version for p in run.policies if p.id == pid)
            columns.append((f"{pid} {version}", scores))
        if len(run.policies) > 1:
            columns.append(("all policies", run.overall()))
    table = Table(title=f"evaluation ({doc['format']}, {doc['mode']})")
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(escape(name), justify="right")
    for key in SCORE_KEYS:
        table.add_row(key, *(str(getattr(s, key)) for _, s in columns))
    con.print(table)
    if doc.get("multi_policy_accuracy") is not None:
        con.print(f"multi-policy accuracy: [bold]{doc['multi_policy_accuracy']:.1%}[/] of {doc['multi_policy_items']} "
                  "items (every policy's verdict matches gold)", highlight=False)
    if changed:
        diff = Table(title=f"{len(changed)} items changed verdict")
        for col in ("label", "a", "b", "text"):
            diff.add_column(col)
        for c in changed[:50]:
            diff.add_row(str(c["label"]), str(c["a"]), str(c["b"]), escape(c["text"][:100]))
        con.print(diff)
