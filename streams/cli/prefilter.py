"""``safeguard prefilter train|eval``: distil the cascade's CPU prefilter from the reasoner, and check it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from streams.authoring.datasets import FORMATS
from streams.errors import ConfigError

if TYPE_CHECKING:
    from streams.cascade.gate import Decision
    from streams.cascade.model import Prefilter
    from streams.cascade.train import Example


def add_commands(sub: Any, emit_json: Any) -> None:
    p = sub.add_parser("prefilter", help="train and check the cascade's CPU prefilter",
                       description="A per-policy CPU classifier, trained on the reasoner's own labels, that "
                       "decides the easy majority of (event, policy) pairs so the GPUs see only what needs "
                       "reasoning (docs/cascade.md).")
    psub = p.add_subparsers(title="prefilter commands", metavar="COMMAND")
    t = psub.add_parser("train", help="train a prefilter for one policy",
                        description="Train a prefilter for the policy's current version from labelled datasets "
                        "(any layout `safeguard eval` reads) or, with --from-labels, from the label events the "
                        "model produced for that version (their content read back from each label's source "
                        "offset). The threshold is certified: the highest at which the 95% lower confidence "
                        "bound on hold-out recall still meets --target-recall. Too few hold-out violations to "
                        "certify that is an error (exit 1, no file; the message says how many are needed) "
                        "unless --certify-available. With --replace FILE, the new prefilter replaces FILE only "
                        "if it is no worse on the newest --fresh share of the label history; otherwise it is "
                        "written to FILE.rejected (exit 0 either way).")
    t.add_argument("--policy", type=Path, required=True, help="the policy file (<id>.md)")
    t.add_argument("--dataset", type=Path, action="append", default=[], help="labelled dataset, repeatable")
    t.add_argument("--format", choices=FORMATS, default="auto", help="dataset layout (default auto)")
    t.add_argument("--category", action="append", default=[], metavar="CODE[=POLICY_ID]",
                   help="2022 moderation set: which label to learn")
    t.add_argument("--from-labels", action="store_true",
                   help="learn from kafka.labels_topic (decided_by model, the current policy version)")
    t.add_argument("--from-reviews", action="store_true",
                   help="also learn from moderators' decisions: the review events on integrations.coop.reviews_topic "
                   "(safeguard coop callbacks), content read back from Kafka; needs --config")
    t.add_argument("--config", type=Path,
                   help="consumer config, for --from-labels / --from-reviews (Kafka, topics, input format)")
    t.add_argument("--max", type=int, default=100_000,
                   help="--from-labels: the newest this many labels (default 100000)")
    t.add_argument("--target-recall", type=float, default=0.99,
                   help="recall the 95%% lower bound on the hold-out must meet (default 0.99)")
    t.add_argument("--certify-available", action="store_true",
                   help="too few hold-out violations for the target: send every one of them and report the "
                   "bound they support (target_met false) instead of failing")
    t.add_argument("--holdout", type=float, default=0.2, help="share of items held out (default 0.2)")
    t.add_argument("--out", type=Path, help="file to write (default <policy-id>.prefilter)")
    t.add_argument("--replace", type=Path, metavar="FILE",
                   help="--from-labels: replace the running FILE only if the new prefilter is no worse on fresh "
                   "labels, else write FILE.rejected")
    t.add_argument("--fresh", type=float, default=0.2,
                   help="--replace: newest share of the label history kept out of training to judge on (default 0.2)")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    t.set_defaults(func=lambda a: _cmd_train(a, emit_json))
    e = psub.add_parser("eval", help="score a trained prefilter on a labelled set",
                        description="Recall (violations the prefilter sends to the model) and pass rate (share "
                        "of items it sends) of a prefilter on a labelled set, at its threshold.")
    e.add_argument("--model", type=Path, required=True, help="a .prefilter file")
    e.add_argument("--dataset", type=Path, required=True, help="labelled dataset")
    e.add_argument("--format", choices=FORMATS, default="auto", help="dataset layout (default auto)")
    e.add_argument("--category", action="append", default=[], metavar="CODE[=POLICY_ID]",
                   help="2022 moderation set: which label to score")
    e.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    e.set_defaults(func=lambda a: _cmd_eval(a, emit_json))


def _cmd_train(args: argparse.Namespace, emit_json: Any) -> int:
    from streams.authoring.datasets import load_dataset, parse_categories
    from streams.cascade.train import examples_for, train
    from streams.policy.model import load_policy

    if args.replace is not None:
        if not args.from_labels:
            raise ConfigError("--replace needs --from-labels (the fresh labels both prefilters are judged on)")
        if args.out is not None:
            raise ConfigError("give --out or --replace, not both")
        if not 0 < args.fresh <= 0.5:
            raise ConfigError(f"--fresh must be in (0, 0.5], got {args.fresh}")
    policy = load_policy(args.policy)
    examples: list[Example] = []
    fresh: list[Example] = []
    sources = []
    for path in args.dataset:
        data = load_dataset(path, args.format, categories=parse_categories(args.category))
        examples += examples_for(policy.id, data.items)
        sources.append(str(path))
    if args.from_reviews:
        from streams.authoring.reviews import dataset_from_reviews
        from streams.config import load_settings

        if args.config is None:
            raise ConfigError("--from-reviews needs --config (the consumer's: Kafka, topics, input format)")
        settings = load_settings(args.config)
        reviewed = examples_for(policy.id, dataset_from_reviews(settings, [policy.id]).items)
        examples += reviewed
        sources.append(f"{settings.integrations.coop.reviews_topic} ({len(reviewed)} reviews)")
    if args.from_labels:
        from streams.cascade.gate import split_fresh, unseen
        from streams.cascade.history import examples_from_labels
        from streams.config import load_settings

        if args.config is None:
            raise ConfigError("--from-labels needs --config (the consumer's: Kafka, topics, input format)")
        settings = load_settings(args.config)
        history = examples_from_labels(settings, policy, limit=args.max)
        if args.replace is not None:
            history, fresh = split_fresh(history, args.fresh)
            examples = unseen(examples, fresh)
            history = unseen(history, fresh)
        examples += history
        sources.append(f"{settings.kafka.labels_topic} ({len(history)} labels)")
    if not examples:
        raise ConfigError("nothing to learn from: give --dataset FILE (repeatable), --from-labels and/or "
                          "--from-reviews")
    out = args.replace or args.out or Path(f"{policy.id}.prefilter")
    logging.getLogger(__name__).info("training prefilter policy=%s version=%s examples=%d (about 15 s per 10,000)",
                                     policy.id, policy.version, len(examples))
    result = train(policy, examples, target_recall=args.target_recall, holdout=args.holdout,
                   source=", ".join(sources), certify_available=args.certify_available)
    gate = None
    if args.replace is not None:
        from streams.cascade.gate import install

        gate = _gate(result.prefilter, args.replace, fresh, args.target_recall)  # on labels neither learned
        out = install(result.prefilter, args.replace, gate)
    else:
        result.prefilter.save(out)
    cert = result.certificate
    doc = {"policy_id": policy.id, "policy_version": policy.version, "n_train": result.n_train,
           "n_holdout": result.n_holdout, "positives": result.positives,
           "threshold": round(result.prefilter.threshold, 4), "holdout_recall": round(result.holdout_recall, 4),
           "holdout_pass_rate": round(result.holdout_pass_rate, 4), "out": str(out), **cert.figures()}
    if gate is not None:
        doc["gate"] = gate.figures()
    if args.json:
        emit_json(doc)
        return 0
    met = "meets" if cert.target_met else "does NOT meet"
    Console(soft_wrap=True).print(
        f"prefilter for {policy.id} {policy.version} written to {out}: recall at least {cert.recall_lower_bound:.1%} "
        f"(95% lower bound over {cert.holdout_positives} held-out violations, {met} the target "
        f"{cert.target_recall:.1%}) while passing {result.holdout_pass_rate:.1%} of held-out items to the model "
        f"({result.n_train} training, {result.n_holdout} held out, {result.positives} violations)"
        + (f"; gate: {'replaced' if gate.replaced else 'kept aside'}, {gate.reason}" if gate else ""),
        highlight=False)
    return 0


def _gate(new: Prefilter, path: Path, fresh: list[Example], target_recall: float) -> Decision:
    """Judge ``new`` against the running file at ``path``: a missing or unreadable file is nothing to
    compare with (the consumer cannot use it either); one for another policy is a usage error."""
    from streams.cascade.gate import judge
    from streams.cascade.model import load_prefilter

    old = None
    if path.exists():
        try:
            old = load_prefilter(path)
        except ConfigError as exc:
            logging.getLogger(__name__).warning("running prefilter unreadable, replacing it path=%s reason=%s",
                                                path, exc)
        if old is not None and old.policy_id != new.policy_id:
            raise ConfigError(f"--replace {path} holds the prefilter of policy {old.policy_id}, not {new.policy_id}")
    from streams.cascade.gate import after

    return judge(new, old, after(fresh, old), target_recall=target_recall)


def _cmd_eval(args: argparse.Namespace, emit_json: Any) -> int:
    import numpy as np

    from streams.authoring.datasets import load_dataset, parse_categories
    from streams.cascade.bounds import lower
    from streams.cascade.model import load_prefilter
    from streams.cascade.train import examples_for

    prefilter = load_prefilter(args.model)
    data = load_dataset(args.dataset, args.format, categories=parse_categories(args.category))
    examples = examples_for(prefilter.policy_id, data.items)
    if not examples:
        raise ConfigError(f"{args.dataset}: no labels for policy {prefilter.policy_id}")
    scores = prefilter.scores([e.text for e in examples])
    labels = np.asarray([e.label for e in examples])
    sent = scores >= prefilter.threshold
    positives = int(labels.sum())
    doc = {"policy_id": prefilter.policy_id, "policy_version": prefilter.policy_version, "n": len(examples),
           "positives": positives, "threshold": round(prefilter.threshold, 4),
           "recall": round(float(sent[labels == 1].mean()), 4) if positives else None,
           "recall_lower_bound": round(lower(int(sent[labels == 1].sum()), positives), 4),
           "pass_rate": round(float(sent.mean()), 4), "skipped_violations": int((~sent & (labels == 1)).sum())}
    if args.json:
        emit_json(doc)
        return 0
    Console(soft_wrap=True).print(f"{prefilter.policy_id} {prefilter.policy_version}: recall {doc['recall']} (at "
                                  f"least {doc['recall_lower_bound']} at 95% confidence) on "
                                  f"{positives} violations, pass rate {doc['pass_rate']} of {len(examples)} items",
                                  highlight=False)
    return 0
