"""``safeguard capacity``: GPUs, consumer pods and partitions for a load (:mod:`streams.ops.capacity`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from streams.errors import ConfigError
from streams.ops.capacity import Workload, from_bench, plan
from streams.ops.profiles import DEFAULT_PROFILE, PROFILES

_DEFAULTS = Workload(events_per_s=1.0)


def add_command(sub: Any, emit_json: Callable[[Any], None]) -> None:
    c = sub.add_parser(
        "capacity", help="GPUs, consumer pods and partitions for a load",
        description="Size a deployment from the load: the replicas' steady state from the hardware profile "
        "(the model the replica simulator runs, docs/capacity.md), the consumers from the CPU per label the "
        "bench measures. Every figure behind the answer is printed with it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--events-per-s", type=float, required=True, metavar="N", help="content events per second")
    c.add_argument("--policies", type=int, default=1, metavar="K", help="policies applied to each event")
    c.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES), help="model and GPU")
    c.add_argument("--effort", default="low", help="reasoning effort: low, medium or high")
    c.add_argument("--prefilter-pass", type=float, default=1.0, metavar="R",
                   help="share of (event, policy) pairs the cascade's prefilter sends to the model "
                   "(safeguard bench's cascade mode measures it: model_requests_per_event)")
    c.add_argument("--cache-hit", type=float, default=0.0, metavar="R",
                   help="share of model-bound pairs answered by the dedupe cache (duplicates)")
    c.add_argument("--mode", default="separate", choices=("separate", "combined"),
                   help="one request per policy, or one per event carrying every policy")
    c.add_argument("--content-tokens", type=float, default=_DEFAULTS.content_tokens,
                   help="mean content tokens per event (about 4 characters each)")
    c.add_argument("--policy-tokens", type=float, default=_DEFAULTS.policy_tokens, help="mean policy length")
    c.add_argument("--final-tokens", type=float, default=_DEFAULTS.final_tokens,
                   help="tokens of the final answer after the reasoning")
    c.add_argument("--reasoning-tokens", type=float, metavar="T",
                   help="mean reasoning tokens per request measured on your replicas (rate of "
                   "vllm:generation_tokens_total over vllm:request_success_total, less the final answer); "
                   "default: the profile's assumption for --effort")
    c.add_argument("--target-utilisation", type=float, default=_DEFAULTS.target_utilisation,
                   help="share of saturated throughput to plan GPUs and pod CPU at")
    c.add_argument("--pod-cores", type=float, default=_DEFAULTS.pod_cores, help="CPU cores per consumer pod")
    c.add_argument("--pod-inflight-events", type=int, default=_DEFAULTS.pod_inflight_events,
                   help="batching.max_inflight_events of each pod")
    c.add_argument("--from-bench", type=Path, metavar="FILE",
                   help="take the CPU per label from a `safeguard bench --json` result measured on your hardware")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=lambda args: _cmd_capacity(args, emit_json))


def _cmd_capacity(args: argparse.Namespace, emit_json: Callable[[Any], None]) -> int:
    cpu: dict[str, float] = {}
    if args.from_bench:
        try:
            cpu = from_bench(orjson.loads(args.from_bench.read_bytes().strip().splitlines()[-1]))
        except (OSError, orjson.JSONDecodeError, IndexError, ValueError) as exc:
            raise ConfigError(f"--from-bench {args.from_bench}: {exc}") from None
    try:
        w = Workload(events_per_s=args.events_per_s, policies=args.policies, profile=args.profile, effort=args.effort,
                     prefilter_pass=args.prefilter_pass, cache_hit=args.cache_hit, mode=args.mode,
                     content_tokens=args.content_tokens, policy_tokens=args.policy_tokens,
                     final_tokens=args.final_tokens, reasoning_tokens=args.reasoning_tokens,
                     target_utilisation=args.target_utilisation,
                     pod_cores=args.pod_cores, pod_inflight_events=args.pod_inflight_events, **cpu)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    result = plan(w)
    if args.json:
        emit_json(result)
        return 0
    con = Console()
    table = Table(title=f"capacity for {w.events_per_s:g} events/s x {w.policies} policies ({w.mode})")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("from")
    table.add_row("model requests/s", f"{result['model_requests_per_s']:g}",
                  f"events x policies x pass {w.prefilter_pass:g} x (1 - cache {w.cache_hit:g})"
                  if w.mode == "separate" else "events x (1 - (1 - pass)^policies) x (1 - cache)")
    table.add_row("requests/s per GPU", f"{result['per_gpu_requests_per_s']:g}",
                  f"{result['running_per_gpu']:g} running ({result['gpu_limited_by']}), "
                  f"{result['mean_output_tokens']:g} output tokens per request")
    table.add_row("[bold]GPUs[/]", f"[bold]{result['gpus']}[/]", f"at {w.target_utilisation:.0%} of saturation")
    table.add_row("consumer CPU cores", f"{result['consumer_cpu_cores']:g}", "CPU per label x labels/s")
    by = result["consumer_pods_by"]
    table.add_row("[bold]consumer pods[/]", f"[bold]{result['consumer_pods']}[/]",
                  f"CPU needs {by['cpu']}, in-flight needs {by['inflight']}")
    table.add_row("[bold]partitions[/]", f"[bold]{result['partitions']}[/]", "2 x pods, at least 6")
    table.add_row("model latency s", f"{result['model_latency_s']:g}", "mean, at saturation")
    con.print(table)
    for line in result["assumptions"]:
        con.print(f"- {line}", highlight=False)
    return 0
