"""``safeguard bench``: the benchmark modes, and ``--scale`` (consumers x replicas)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from streams.cli.args import BROKER_KINDS, positive_float, positive_int
from streams.errors import ConfigError


def add_command(sub: Any, emit_json: Callable[[Any], None]) -> None:
    b = sub.add_parser("bench", help="benchmark against the ideal, a naive loop, faust and raw Kafka",
                       description="One run, one machine: one local broker (--broker), simulated replicas (same "
                       "profile, time scale and events for every mode). Modes: ideal, pipeline, naive, faust, "
                       "passthrough, cascade (a prefilter in front of the model over steady, shifted and "
                       "obfuscated phases, with and without its controller); --mode picks some.")
    b.add_argument("--quick", action="store_true", help="smaller runs (under 4 minutes on 2 cores)")
    b.add_argument("--mode", type=_modes, action="extend", dest="modes", metavar="MODE[,MODE...]",
                   help="run only these modes (repeatable or a comma list; default all): "
                   "ideal, pipeline, naive, faust, passthrough, cascade; e.g. --mode cascade")
    b.add_argument("--time-scale", type=positive_float,
                   help="simulated GPU speed-up (default 10; 4 with --scale, so this machine's CPUs are not the limit)")
    b.add_argument("--profile", default="gpt-oss-safeguard-20b@h100", help="replica profile")
    b.add_argument("--replicas", type=positive_int, default=1, help="simulated replicas (default 1)")
    b.add_argument("--scale", action="store_true",
                   help="scale-out instead: N consumer processes in one group x M replicas for several (N, M), "
                   "with the capacity model's prediction beside each run (docs/scale.md)")
    b.add_argument("--runs", type=_scale_runs, metavar="NxM[xP],...",
                   help="with --scale: the (consumers x replicas [x partitions, default 12]) runs, e.g. 1x1,2x2,4x4x2")
    b.add_argument("--realtime", action="store_true",
                   help="two-speed moderation instead: replicas saturated by a backlog on a priority-2 topic while "
                   "urgent events arrive on a priority-0 topic, then the same run with lanes off (FCFS): provisional "
                   "and final decision latency, interventions, throughput (docs/interventions.md)")
    b.add_argument("--broker", choices=BROKER_KINDS, default="embedded",
                   help="embedded: the Tansu broker (default, no Java); kafka: Apache Kafka from the launcher "
                   "(Java 17 and Maven; docs/performance.md compares the two)")
    b.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    b.set_defaults(func=lambda args: _cmd_bench(args, emit_json))


def _modes(v: str) -> list[str]:
    modes = [m.strip() for m in v.split(",") if m.strip()]
    if not modes:
        raise argparse.ArgumentTypeError(f"{v!r} names no mode")
    return modes


def _scale_runs(v: str) -> list[tuple[int, int, int]]:
    runs = []
    for part in v.split(","):
        nums = part.strip().lower().split("x")
        try:
            n, m, p = (int(x) for x in (nums + ["12"])[:3]) if len(nums) in (2, 3) else (0, 0, 0)
        except ValueError:
            n = m = p = 0
        if min(n, m, p) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not CONSUMERSxREPLICAS[xPARTITIONS] (e.g. 2x2 or 4x4x2)")
        runs.append((n, m, p))
    return runs


def _cmd_bench(args: argparse.Namespace, emit_json: Callable[[Any], None]) -> int:
    from streams.devtools.bench.runner import MODES, run_bench
    from streams.ops.profiles import PROFILES

    if args.profile not in PROFILES:
        raise ConfigError(f"unknown profile {args.profile!r}; choose from {sorted(PROFILES)}")
    err = Console(stderr=True)
    if args.runs and not args.scale:
        raise ConfigError("--runs goes with --scale")
    if args.modes and args.scale:
        raise ConfigError("--mode does not go with --scale")
    if args.scale:
        return _bench_scale(args, err, emit_json)
    if args.realtime:
        if args.modes:
            raise ConfigError("--mode does not go with --realtime")
        return _bench_realtime(args, err, emit_json)
    if unknown := sorted(set(args.modes or ()) - set(MODES)):
        raise ConfigError(f"unknown bench mode {', '.join(unknown)}; choose from {', '.join(MODES)}")
    result = run_bench(quick=args.quick, time_scale=args.time_scale or 10.0, profile=args.profile,
                       replicas=args.replicas, progress=lambda msg: err.print(f"[dim]bench:[/] {msg}", highlight=False),
                       broker_kind=args.broker, **({"modes": args.modes} if args.modes else {}))
    if args.json:
        emit_json(result)
        return 0
    con = Console()
    modes = [{"mode": mode, **result[mode]} for mode in ("ideal", "pipeline", "naive", "faust", "passthrough")
             if mode in result]
    table = _table(f"safeguard bench ({result['config']['broker_version']})", modes,
                   [("mode", "mode"), ("events/s", "events_per_s"), ("p50 s", "p50_s"), ("p99 s", "p99_s"),
                    ("e2e p50 s", "e2e_p50_s"), ("e2e p99 s", "e2e_p99_s"), ("CPU us/event", "cpu_us_per_event")])
    if table.row_count:
        con.print(table)
    if "cascade" in result:
        con.print(_cascade_table(result["cascade"]))
    if result["ratios"]:
        con.print(result["ratios"], highlight=False)
    return 0


def _cascade_table(c: dict[str, Any]) -> Table:
    """One row per phase and controller setting of the cascade run: what the prefilter kept from
    the model, and which violations it let through."""
    t, phases = c.get("training", {}), c.get("phases", {})
    sizes = ", ".join(f"{phase} {f['events']}" for phase, f in next(iter(phases.values()), {}).items())
    table = Table(title=f"cascade: prefilter trained on {t.get('n_train')} reviews, hold-out recall "
                  f"{t.get('holdout_recall')} (95% lower bound {t.get('recall_lower_bound')})",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"phase: controller on or off; events: {sizes}. recall: of the model's violations; "
                  "prefilter: events it decided; let through: violations it decided / all; safe sent, flagged: "
                  "shares of safe events sent to the model, carrying prefilter_flags")
    table.add_column("phase", no_wrap=True)
    for col in ("recall", "req/event", "prefilter", "let through", "safe sent", "flagged"):
        table.add_column(col, justify="right", no_wrap=True)
    for setting, by_phase in phases.items():
        for phase, f in by_phase.items():
            table.add_row(f"{phase} {setting.removeprefix('controller_')}", _short(f.get("recall_vs_model")),
                          _short(f.get("model_requests_per_event")), _short(f.get("decided_by_prefilter")),
                          f"{f['let_through']}/{f['violations']}",
                          _short(f.get("safe_pass_rate")), _short(f.get("safe_flagged")))
    return table


def _table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str | Callable[[dict[str, Any]], str]]],
           *, first_left: bool = True) -> Table:
    """One row per result: each column a key of the row (shown as is) or a formatter of it."""
    table = Table(title=title)
    for i, (header, _) in enumerate(columns):
        table.add_column(header, justify="left" if first_left and i == 0 else "right")
    for row in rows:
        table.add_row(*(str(row.get(how, "")) if isinstance(how, str) else how(row) for _, how in columns))
    return table


def _short(v: Any) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _bench_scale(args: argparse.Namespace, err: Console, emit_json: Callable[[Any], None]) -> int:
    from streams.devtools.bench.scale import run_scale

    result = run_scale(quick=args.quick, time_scale=args.time_scale or 4.0, profile=args.profile,
                       runs=args.runs, broker_kind=args.broker,
                       progress=lambda msg: err.print(f"[dim]bench:[/] {msg}", highlight=False))
    if args.json:
        emit_json(result)
        return 0
    table = _table(f"safeguard bench --scale (time scale {result['time_scale']:g}, one replica "
                   f"{result['replica_events_per_s']:g} events/s)", result["runs"],
                   [("consumers", "consumers"), ("replicas", "replicas"), ("partitions", "partitions"),
                    ("events", "events"), ("events/s", "events_per_s"), ("x 1x1", "vs_1x1"),
                    ("utilisation", "utilisation"), ("p99 s", "p99_s"), ("predicted", "predicted_events_per_s"),
                    ("error", lambda r: f"{r['prediction_error']:+.1%}")], first_left=False)
    Console().print(table)
    return 0


def _bench_realtime(args: argparse.Namespace, err: Console, emit_json: Callable[[Any], None]) -> int:
    from streams.devtools.bench.realtime import run_realtime

    result = run_realtime(quick=args.quick, time_scale=args.time_scale or 10.0, profile=args.profile,
                          broker_kind=args.broker, replicas=args.replicas,
                          progress=lambda msg: err.print(f"[dim]bench:[/] {msg}", highlight=False))
    if args.json:
        emit_json(result)
        return 0
    r, con = result["realtime"], Console()
    table = Table(title=f"safeguard bench --realtime ({result['config']['broker_version']})", box=box.SIMPLE_HEAD)
    table.add_column("figure")
    table.add_column("lanes on", justify="right")
    table.add_column("lanes off (FCFS)", justify="right")
    table.add_row("provisional decision p50 / p99", f"{r['provisional_p50_ms']} / {r['provisional_p99_ms']} ms", "")
    table.add_row("urgent final decision p50 / p99", f"{r['urgent_final_p50_s']} / {r['urgent_final_p99_s']} s",
                  f"p99 {r['fcfs_urgent_final_p99_s']} s")
    table.add_row("urgent model request p99 (slot -> answer)", f"{r['urgent_service_p99_s']} s", "")
    table.add_row("backlog final decision p99", f"{r['backlog_final_p99_s']} s", "")
    table.add_row("events/s", str(r["events_per_s"]), str(r["fcfs_events_per_s"]))
    table.add_row("interventions", str(r["interventions"]), "")
    con.print(table)
    con.print(result["ratios"], highlight=False)
    return 0
