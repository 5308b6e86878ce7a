"""``safeguard`` command line: parses arguments, wires parts together, renders results.

Exit codes: 0 success; 1 the work failed (a consumer error, events without labels, unreachable
replica); 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streams import __version__
from streams.cli.args import BROKER_KINDS, positive_float, positive_int, rate
from streams.cli.replicas import add_replica_options, replica_settings
from streams.errors import ConfigError, FatalError, PoisonError, RetryableError

log = logging.getLogger("streams.cli.main")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _error("configuration error", exc)
        return 2
    except FatalError as exc:
        _error("error", exc)
        return 1
    except KeyboardInterrupt:
        return 130


def _error(what: str, exc: Exception) -> None:
    # Never wrapped (paths and file:line stay whole for grep and copy), never read as markup.
    Console(stderr=True, soft_wrap=True).print(f"[bold red]{what}:[/] {escape(str(exc))}", highlight=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="safeguard",
        description="Label Kafka content streams with gpt-oss-safeguard served by vLLM replicas.",
    )
    p.add_argument("--version", action="version", version=f"safeguard-streams {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity on stderr (default: info)")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    d = sub.add_parser("demo", help="everything embedded: broker, simulated replicas, consumer, labels",
                       description="Start an embedded Kafka-compatible broker and K simulated replicas, "
                       "produce N sample events, label them all, print the labels and a summary, tear down. "
                       "No GPU, no Docker. Exit 0 only if every event got a label for every routed policy.")
    d.add_argument("--events", type=positive_int, default=300, help="events to produce (default 300)")
    d.add_argument("--replicas", type=positive_int, default=2, help="simulated replicas (default 2)")
    d.add_argument("--time-scale", type=positive_float, default=20.0,
                   help="simulated GPU time runs this many times faster than real time (default 20)")
    d.add_argument("--profile", default="gpt-oss-safeguard-20b@h100", help="replica profile")
    d.add_argument("--cascade", action="store_true",
                   help="train a prefilter per policy on its golden set first, and report how many (event, "
                   "policy) pairs never reached a GPU and how many violations were still caught")
    d.add_argument("--broker", choices=BROKER_KINDS, default="embedded",
                   help="embedded: the Tansu broker (default, no Java); kafka: Apache Kafka started from Maven "
                   "Central jars (Java 17 and Maven, first start downloads them), as in the test suite")
    d.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="the production consumer",
                       description="Consume content events, label them on the replicas, publish labels, commit. "
                       "Config from --config (YAML) overridden by SAFEGUARD_<SECTION>__<KEY> variables. "
                       "SIGTERM drains in-flight work, commits and exits 0.")
    r.add_argument("--config", type=Path, help="YAML config file (docs/configuration.md)")
    r.add_argument("--until-idle", type=positive_float, metavar="SECONDS",
                   help="exit 0 once no input arrived for SECONDS (after assignment) and all is committed")
    r.add_argument("--provisional", action="store_true",
                   help="run the provisional consumer instead: a decision per event before the model answers "
                   "(actions.provisional), in its own group <kafka.group_id>-provisional, CPU only; deploy it "
                   "beside the reasoning consumer (docs/interventions.md, \"Two-speed moderation\")")
    r.set_defaults(func=_cmd_run)

    x = sub.add_parser("escalate", help="escalate repeat offenders (faust-streaming tables over the labels)",
                       description="Count violations per actor (metadata[escalation.actor_field]) and policy in "
                       "tumbling windows of escalation.window_s, in faust-streaming tables backed by changelog "
                       "topics, and emit exactly one escalation per (actor, policy, window) reaching "
                       "escalation.threshold on escalation.topic. Counts survive restarts and rebalances; run it "
                       "as its own Deployment (docs/interventions.md). SIGTERM commits and exits 0.")
    x.add_argument("--config", type=Path, help="YAML config file (the consumer's: kafka, output, escalation)")
    x.add_argument("--until-idle", type=positive_float, metavar="SECONDS",
                   help="exit 0 once no label arrived for SECONDS (after recovery) and all is committed")
    x.set_defaults(func=_cmd_escalate)

    s = sub.add_parser("replica-sim", help="a vLLM-compatible replica simulator",
                       description="Serve /health, /v1/models, /v1/chat/completions and /metrics like vLLM, with a "
                       "continuous-batching latency model of an H100. Verdicts come from --answer-key, else "
                       "the policy's EXAMPLES, else 'no violation'.")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--profile", default="gpt-oss-safeguard-20b@h100",
                   help="gpt-oss-safeguard-20b@h100 (default) or gpt-oss-safeguard-120b@h100")
    s.add_argument("--model", help="served model name (default: the profile's model)")
    s.add_argument("--time-scale", type=positive_float, default=1.0, help="run X times faster than the GPU")
    s.add_argument("--answer-key", type=Path, help='JSONL {"text", "label": 0|1, "category", "policy"?}')
    s.add_argument("--max-num-seqs", type=positive_int, help="override the profile's running-sequence cap")
    s.add_argument("--max-model-len", type=positive_int,
                   help="override the profile's context length in tokens (longer prompts get vLLM's HTTP 400)")
    s.add_argument("--reasoning-field", choices=["reasoning", "reasoning_content"], default="reasoning",
                   help="response field for chain of thought (reasoning_content mimics older vLLM)")
    s.add_argument("--seed", type=int, default=0, help="seed for output lengths and faults")
    for name, what in (("error-rate", "HTTP 500 answers"), ("timeout-rate", "requests that never answer"),
                       ("malformed-rate", "final answers that are not a verdict"),
                       ("truncate-rate", "answers cut off during reasoning (finish_reason=length)")):
        s.add_argument(f"--{name}", type=rate, default=0.0, help=f"fraction of {what} (0..1)")
    s.set_defaults(func=_cmd_sim)

    c = sub.add_parser("classify", help="one content item against one policy",
                       description="Classify one text with one policy and print verdict, rationale and reasoning.")
    c.add_argument("--policy", type=Path, required=True, help="policy file (<id>.md)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the content to classify")
    src.add_argument("--file", type=Path, help="read the content from this file")
    add_replica_options(c)
    c.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    c.set_defaults(func=_cmd_classify)

    sv = sub.add_parser("serve-replica", help="print (or run) the recommended vllm serve command",
                        description="Print the vllm serve command recommended for a model and GPU profile; "
                        "--exec runs it when vLLM is installed (pip install 'safeguard-streams[vllm]').")
    sv.add_argument("--profile", default="gpt-oss-safeguard-20b@h100",
                    help="gpt-oss-safeguard-20b@h100 (default), gpt-oss-safeguard-120b@h100, "
                    "gpt-oss-safeguard-120b@2xh100")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--priority", action="store_true",
                    help="add --scheduling-policy priority, so the replica admits requests by the priority the "
                    "consumer sends with replicas.priority: true (lanes; without it vLLM accepts the field and "
                    "ignores it)")
    sv.add_argument("--exec", dest="run", action="store_true", help="run it instead of printing it")
    sv.set_defaults(func=_cmd_serve)

    from streams.cli import bench, broker, capacity, coop, engine, evaluation, policies, prefilter

    bench.add_command(sub, _emit_json)
    broker.add_command(sub, _emit_json)
    capacity.add_command(sub, _emit_json)
    coop.add_command(sub)
    engine.add_command(sub, _emit_json)
    evaluation.add_command(sub, _emit_json)
    policies.add_commands(sub)
    prefilter.add_commands(sub, _emit_json)
    return p


def _emit_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    sys.stdout.flush()


# ---- commands -------------------------------------------------------------------------------

def _cmd_run(args: argparse.Namespace) -> int:
    from streams.app import run, run_consumer
    from streams.config import load_settings

    settings = load_settings(args.config)
    run(run_consumer(settings, until_idle=args.until_idle, provisional=args.provisional))
    return 0


def _cmd_escalate(args: argparse.Namespace) -> int:
    from streams.app import run
    from streams.config import load_settings
    from streams.interventions.escalate import run_escalation

    settings = load_settings(args.config)
    try:
        run(run_escalation(settings, until_idle=args.until_idle))
    except BaseException as exc:
        _exit_without_lingering_threads(exc)
        raise
    _exit_without_lingering_threads(None)
    return 0


def _exit_without_lingering_threads(error: BaseException | None, grace_s: float = 10.0) -> None:
    """faust runs its Kafka consumer on a non-daemon thread; a stop that fails half-way leaves it
    rejoining the group forever and the interpreter waiting for it, so SIGTERM would never end the
    process. Give such threads ``grace_s``, then exit without them (status 1, saying which)."""
    import logging
    import os
    import threading
    import time

    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if lingering:
        logging.getLogger("streams.interventions.escalate").error(
            "threads still running %.0fs after the escalation app stopped (%s): exiting without them; the "
            "next start re-reads whatever was not committed%s", grace_s, ", ".join(lingering),
            f" (the app stopped on: {error!r})" if error is not None else "")
        logging.shutdown()
        os._exit(1)


def _cmd_sim(args: argparse.Namespace) -> int:
    from streams.devtools.sim.answers import AnswerKey
    from streams.devtools.sim.server import Faults, SimConfig, serve
    from streams.ops.profiles import PROFILES

    if args.profile not in PROFILES:
        raise ConfigError(f"unknown profile {args.profile!r}; choose from {sorted(PROFILES)}")
    profile = PROFILES[args.profile]
    from dataclasses import replace
    if args.max_num_seqs:
        profile = replace(profile, max_num_seqs=args.max_num_seqs)
    if args.max_model_len:
        profile = replace(profile, max_model_len=args.max_model_len)
    config = SimConfig(
        profile=profile,
        model=args.model or profile.model,
        time_scale=args.time_scale,
        answer_key=AnswerKey.load(args.answer_key) if args.answer_key else None,
        faults=Faults(args.error_rate, args.timeout_rate, args.malformed_rate, args.truncate_rate, args.seed),
        reasoning_field=args.reasoning_field,
    )
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        raise FatalError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from streams.inference.labeler import Labeler
    from streams.inference.replicas.pool import ReplicaPool
    from streams.policy.model import load_policy

    policy = load_policy(args.policy)
    if args.file is not None:
        try:
            content = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {args.file}: {exc}") from exc
    else:
        content = args.text
    replicas = replica_settings(args)

    async def go() -> Any:
        async with ReplicaPool(replicas, retry_limit=2, backoff_base_s=0.2) as pool:
            return await Labeler(pool, replicas, default_effort="low", effort=args.effort).decide(policy, content)

    try:
        decision = asyncio.run(go())
    except RetryableError as exc:
        raise FatalError(f"replica unavailable ({', '.join(replicas.urls)}): {exc}") from exc
    except PoisonError as exc:
        raise FatalError(f"no usable verdict ({exc.error_type}): {exc}") from exc
    v = decision.verdict
    doc = {"policy_id": policy.id, "policy_version": policy.version, "violation": v.violation,
           "category": v.category, "rule_ids": v.rule_ids, "confidence": v.confidence, "rationale": v.rationale,
           "reasoning": decision.reasoning,
           "usage": {"prompt_tokens": decision.prompt_tokens, "completion_tokens": decision.completion_tokens}}
    if args.json:
        _emit_json(doc)
        return 0
    con = Console()
    verdict = "[bold red]VIOLATION[/]" if v.violation else "[bold green]no violation[/]"
    # Everything the model wrote is escaped: "[/]" in a rationale must print, not be read as markup.
    con.print(f"{policy.id} {policy.version}: {verdict}"
              + (f"  category={escape(v.category)}" if v.category else "")
              + (f"  confidence={v.confidence}" if v.confidence else ""))
    if v.rationale:
        con.print(f"[bold]rationale:[/] {escape(v.rationale)}", highlight=False)
    if decision.reasoning:
        con.print(f"[dim]reasoning ({decision.completion_tokens} completion tokens):[/] "
                  f"[dim]{escape(decision.reasoning[:600])}[/]", highlight=False)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import os
    import shlex
    import shutil

    from streams.ops.vllm import SERVE_PROFILES, serve_command

    if args.profile not in SERVE_PROFILES:
        raise ConfigError(f"unknown profile {args.profile!r}; choose from {sorted(SERVE_PROFILES)}")
    cmd = serve_command(args.profile, port=args.port, priority=args.priority)
    if not args.run:
        sys.stdout.write(shlex.join(cmd) + "\n")
        return 0
    binary = shutil.which("vllm")
    if binary is None:
        raise FatalError("vllm is not installed here; pip install 'safeguard-streams[vllm]' on a GPU machine")
    os.execv(binary, cmd)  # noqa: S606 - replacing this process with vllm is the point
    return 0  # pragma: no cover


def _cmd_demo(args: argparse.Namespace) -> int:
    from streams.devtools.demo import run_demo

    if args.json:
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    result = asyncio.run(run_demo(events=args.events, replicas=args.replicas, time_scale=args.time_scale,
                                  profile=args.profile, cascade=args.cascade,
                                  broker_kind=args.broker))
    summary = result.summary()
    con = Console(stderr=args.json, width=None if sys.stdout.isatty() else 190)
    _render_labels(con, result)
    con.print(
        f"[bold]{summary['events']}[/] events -> [bold]{summary['labels']}[/] labels "
        f"({summary['violations']} violations, {summary['dead_letters']} dead letters) in "
        f"{summary['elapsed_s']:.1f}s = [bold]{summary['events_per_s']}[/] events/s on {summary['broker']}; "
        f"agreement with expected verdicts {summary['agreement']:.1%}", highlight=False)
    if result.cascade is not None:
        c = summary["cascade"]
        con.print(f"cascade: {c['decided_by_prefilter']} of {c['pairs']} (event, policy) pairs decided on the CPU "
                  f"by the prefilter ({c['events_without_gpu']} events never reached a GPU, {c['audited']} audited); "
                  f"{c['violations_caught']} of {c['violations_expected']} expected violations caught",
                  highlight=False)
    decided = ", ".join(f"{n} {action}" for action, n in summary["decisions"].items())
    con.print(f"decisions: {decided}", highlight=False)
    two = summary["two_speed"]
    turned = ", ".join(f"{n} {change}" for change, n in sorted(two["interventions"].items())) or "none"
    con.print(f"two-speed: {two['provisional']} provisional decisions, p50 {two['provisional_p50_ms']:.0f} ms / p99 "
              f"{two['provisional_p99_ms']:.0f} ms after the event was written; final decisions p50 "
              f"{two['final_p50_s']:.2f} s / p99 {two['final_p99_s']:.2f} s; interventions: {turned}", highlight=False)
    for ex in two["examples"]:
        text = result.texts.get(ex["event_id"], "")
        con.print(f"  intervention: {escape(ex['event_id'])} {ex['from']} at once, {ex['to']} when the reasoner spoke: "
                  f"{escape(text[:60])}", highlight=False)
    esc = summary["escalations"]
    for actor, policy in esc["emitted"]:
        count = sum(1 for (e, p), lab in result.labels.items() if p == policy and lab["violation"]
                    and result.actors.get(e) == actor)
        con.print(f"escalation: [bold]{escape(actor)}[/] for {policy} ({count} violations in the window)",
                  highlight=False)
    if not result.escalated_as_expected and result.complete:
        con.print(f"[bold red]escalations differ from the labels' counts[/]: expected {esc['expected']}, "
                  f"emitted {esc['emitted']} in {esc['records']} records", highlight=False)
    missing = [k for k in result.expected if k not in result.labels]
    if missing:
        con.print(f"[bold red]{len(missing)} expected labels never arrived[/], e.g. {escape(str(missing[:5]))}")
    unprovisional = sorted(e for e, d in result.decisions.items() if d["supersedes"] and e not in result.provisional)
    if unprovisional:
        con.print(f"[bold red]{len(unprovisional)} events have no provisional decision[/], e.g. "
                  f"{escape(str(unprovisional[:5]))}")
    undecided = sorted({e for e, _ in result.expected} - set(result.decisions))
    if undecided:
        con.print(f"[bold red]{len(undecided)} events have no decision[/], e.g. {escape(str(undecided[:5]))}")
    if args.json:
        _emit_json(summary)
    return 0 if result.complete and result.escalated_as_expected else 1


def _render_labels(con: Console, result: Any, rows: int = 14) -> None:
    labels = list(result.labels.values())
    shown = [lab for lab in labels if lab["violation"]][: rows // 2]
    shown += [lab for lab in labels if not lab["violation"]][: rows - len(shown)]
    table = Table(title=f"Sample of {len(labels)} labels", show_lines=False)
    for col, width in (("event", 8), ("content", 30), ("policy", 13), ("verdict", 9), ("category", 8),
                       ("latency", 7), ("rationale", 20)):
        table.add_column(col, overflow="ellipsis", no_wrap=True, min_width=width)
    for lab in shown:
        text = result.texts.get(lab["event_id"], "")
        table.add_row(escape(lab["event_id"]), escape(text[:48] + ("..." if len(text) > 48 else "")),
                      lab["policy_id"], "[red]violation[/]" if lab["violation"] else "[green]ok[/]",
                      escape(lab["category"] or ""), f"{lab['latency_ms'] / 1000:.2f}s",
                      escape((lab["rationale"] or "")[:70]))
    con.print(table)
