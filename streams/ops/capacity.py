"""Capacity model: GPUs, consumer pods and partitions for a load (``safeguard capacity``).

The GPU side is the continuous-batching model the replica simulator runs (:mod:`streams.ops.profiles`),
solved for its steady state instead of simulated; docs/capacity.md derives it and lists what is
measured and what is assumed. In short, per replica::

    running     = min(max_num_seqs, KV cache tokens / KV tokens per running sequence, offered concurrency)
    gpu_s/req   = mean output tokens * step(running) / running + uncached prompt tokens / prefill tok/s
    req/s       = 1 / gpu_s/req

with mean output tokens = the lognormal reasoning length's mean (median * exp(sigma^2 / 2)) plus the
final answer. Requests are ``events * policies * prefilter pass * (1 - cache hit)`` in separate mode,
``events * (1 - (1 - pass)^policies) * (1 - cache hit)`` in combined mode (one request carries every
policy that passed, at 80% of the summed reasoning, as the simulator assumes). Consumer CPU is the
bench's measured CPU per label of each kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from streams.ops.profiles import (
    COMBINED_REASONING_SHARE,
    DEFAULT_PROFILE,
    HARMONY_OVERHEAD_TOKENS,
    PROFILES,
    Profile,
)

PREFIX_BLOCK = 16  # vLLM caches prefixes in whole blocks: the policy's partial last block is prefilled
STEADY_SHARE = 0.8  # the bench's events/s is taken over the middle 80% of completions


@dataclass(frozen=True)
class Workload:
    """What ``safeguard capacity`` is asked; every field is a command-line option."""

    events_per_s: float
    policies: int = 1
    profile: str = DEFAULT_PROFILE
    effort: str = "low"
    prefilter_pass: float = 1.0
    cache_hit: float = 0.0
    mode: str = "separate"
    content_tokens: float = 100.0
    policy_tokens: float = 750.0
    final_tokens: float = 50.0
    reasoning_tokens: float | None = None  # measured mean per request; None: the profile's lognormal for effort
    target_utilisation: float = 0.8
    cpu_us_per_model_label: float = 546.0
    cpu_us_per_prefilter_label: float = 113.0
    cpu_us_per_cache_label: float = 112.0
    pod_cores: float = 1.0
    pod_inflight_events: int = 4096

    def __post_init__(self) -> None:
        problems = []
        if not self.events_per_s > 0:
            problems.append("--events-per-s must be above 0")
        if self.policies < 1:
            problems.append("--policies must be at least 1")
        if self.profile not in PROFILES:
            problems.append(f"unknown --profile {self.profile!r}; choose from {sorted(PROFILES)}")
        elif self.effort not in PROFILES[self.profile].reasoning_median:
            problems.append(f"unknown --effort {self.effort!r}; choose from "
                            f"{sorted(PROFILES[self.profile].reasoning_median)}")
        if not 0 < self.prefilter_pass <= 1:
            problems.append("--prefilter-pass must be in (0, 1]")
        if not 0 <= self.cache_hit < 1:
            problems.append("--cache-hit must be in [0, 1)")
        if self.mode not in ("separate", "combined"):
            problems.append("--mode must be separate or combined")
        if not 0 < self.target_utilisation <= 1:
            problems.append("--target-utilisation must be in (0, 1]")
        if self.reasoning_tokens is not None and self.reasoning_tokens <= 0:
            problems.append("--reasoning-tokens must be above 0")
        for name in ("content_tokens", "policy_tokens", "final_tokens", "pod_cores", "cpu_us_per_model_label",
                     "cpu_us_per_prefilter_label", "cpu_us_per_cache_label"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be above 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class RequestShape:
    """One model request, on average: tokens in and out."""

    output_tokens: float  # reasoning + final answer
    prompt_tokens: float
    uncached_tokens: float  # what prefill computes after a prefix-cache hit on the policy
    kv_tokens_running: float  # KV cache a running sequence holds, on average over its life


@dataclass
class ReplicaRate:
    running: float
    gpu_s_per_request: float
    requests_per_s: float
    limited_by: str
    shape: RequestShape = field(repr=False)


def request_shape(w: Workload) -> RequestShape:
    """Separate mode: one policy per request. Combined: the policies that passed, in one prompt."""
    p = PROFILES[w.profile]
    median, sigma = p.reasoning_median[w.effort], p.reasoning_sigma
    mean_reasoning = w.reasoning_tokens if w.reasoning_tokens is not None else median * math.exp(sigma**2 / 2)
    # A running sequence's generated length, length-biased (long ones stay longer): E[L^2] / (2 E[L]),
    # which for a lognormal is mean * exp(sigma^2) / 2.
    mean_partial = mean_reasoning * math.exp(sigma**2) / 2
    policies = 1.0
    if w.mode == "combined":
        any_pass = 1 - (1 - w.prefilter_pass) ** w.policies
        policies = w.policies * w.prefilter_pass / any_pass  # policies per request, given one passed
        mean_reasoning *= COMBINED_REASONING_SHARE * policies
        mean_partial *= COMBINED_REASONING_SHARE * policies
    prefix = HARMONY_OVERHEAD_TOKENS + w.policy_tokens * policies
    prompt = prefix + w.content_tokens
    uncached = w.content_tokens + (prefix % PREFIX_BLOCK)
    return RequestShape(output_tokens=mean_reasoning + w.final_tokens * policies, prompt_tokens=prompt,
                        uncached_tokens=uncached, kv_tokens_running=prompt + mean_partial)


def replica_rate(w: Workload, *, concurrency: float | None = None) -> ReplicaRate:
    """Steady-state requests per GPU-second of one replica kept ``concurrency`` requests busy
    (None: as many as it runs, the saturated replica the GPU count is sized on)."""
    p: Profile = PROFILES[w.profile]
    shape = request_shape(w)
    kv_bound = p.kv_capacity_tokens / shape.kv_tokens_running
    bounds = {"max_num_seqs": float(p.max_num_seqs), "kv_cache": kv_bound}
    if concurrency is not None:
        bounds["offered_concurrency"] = concurrency
    limited_by = min(bounds, key=lambda k: bounds[k])
    running = max(1.0, bounds[limited_by])
    step = p.step_time(round(running))
    gpu_s = shape.output_tokens * step / running + shape.uncached_tokens / p.prefill_tokens_per_s
    return ReplicaRate(running=running, gpu_s_per_request=gpu_s, requests_per_s=1 / gpu_s,
                       limited_by=limited_by, shape=shape)


def model_requests_per_s(w: Workload) -> float:
    if w.mode == "combined":
        return w.events_per_s * (1 - (1 - w.prefilter_pass) ** w.policies) * (1 - w.cache_hit)
    return w.events_per_s * w.policies * w.prefilter_pass * (1 - w.cache_hit)


def plan(w: Workload) -> dict[str, Any]:
    """The answer of ``safeguard capacity --json`` (DESIGN contract: events_per_s, model_requests_per_s,
    gpus, consumer_pods, partitions, inputs, assumptions; the rest is detail)."""
    p = PROFILES[w.profile]
    rate = replica_rate(w)
    requests = model_requests_per_s(w)
    gpus = math.ceil(requests / (rate.requests_per_s * w.target_utilisation) - 1e-9)
    pairs = w.events_per_s * w.policies
    model_labels = pairs * w.prefilter_pass * (1 - w.cache_hit)
    cache_labels = pairs * w.prefilter_pass * w.cache_hit
    prefilter_labels = pairs * (1 - w.prefilter_pass)
    cpu_cores = (model_labels * w.cpu_us_per_model_label + prefilter_labels * w.cpu_us_per_prefilter_label
                 + cache_labels * w.cpu_us_per_cache_label) / 1e6
    pods_cpu = math.ceil(cpu_cores / (w.pod_cores * w.target_utilisation) - 1e-9)
    # Each pod keeps at most pod_inflight_events in flight; the replicas need max_num_seqs each, plus
    # the eighth of queue room the adaptive limit keeps (docs/configuration.md).
    inflight = gpus * min(rate.running, p.max_num_seqs) * 1.125
    pods_inflight = math.ceil(inflight / w.pod_inflight_events - 1e-9)
    pods = max(1, pods_cpu, pods_inflight)
    partitions = max(6, 2 * pods)
    latency_s = rate.shape.output_tokens * p.step_time(round(rate.running))
    return {
        "events_per_s": w.events_per_s,
        "model_requests_per_s": round(requests, 2),
        "gpus": gpus,
        "consumer_pods": pods,
        "partitions": partitions,
        "per_gpu_requests_per_s": round(rate.requests_per_s, 2),
        "gpu_seconds_per_request": round(rate.gpu_s_per_request, 5),
        "running_per_gpu": round(rate.running, 1),
        "gpu_limited_by": rate.limited_by,
        "mean_output_tokens": round(rate.shape.output_tokens, 1),
        "model_latency_s": round(latency_s, 2),
        "consumer_cpu_cores": round(cpu_cores, 2),
        "consumer_pods_by": {"cpu": pods_cpu, "inflight": pods_inflight},
        "inputs": asdict(w),
        "assumptions": assumptions(w, p),
    }


def assumptions(w: Workload, p: Profile) -> list[str]:
    reasoning = (f"reasoning {w.reasoning_tokens:.0f} tokens per request on average (given)" if w.reasoning_tokens
                 else f"reasoning length lognormal, median {p.reasoning_median[w.effort]:.0f} tokens at {w.effort} "
                 f"effort, sigma {p.reasoning_sigma} (not published: measure yours, docs/capacity.md)")
    return [
        f"{p.name}: {p.saturated_output_tps():.0f} output tok/s at {p.max_num_seqs} sequences, step(1) "
        f"{p.step_time(1) * 1e3:.1f} ms, prefill {p.prefill_tokens_per_s:.0f} tok/s, KV {p.kv_capacity_tokens} tokens "
        "(published H100 figures, streams/ops/profiles.py)",
        reasoning,
        f"final answer {w.final_tokens:.0f} tokens, content {w.content_tokens:.0f} tokens, policy "
        f"{w.policy_tokens:.0f} tokens; the policy prefix is cached (vLLM --enable-prefix-caching)",
        f"GPUs sized at {w.target_utilisation:.0%} of saturated throughput (headroom for bursts and a lost replica)",
        f"consumer CPU per label: {w.cpu_us_per_model_label:.0f} us (model), {w.cpu_us_per_prefilter_label:.0f} us "
        f"(prefilter), {w.cpu_us_per_cache_label:.0f} us (cache), measured by safeguard bench on 2 cores; "
        f"pods of {w.pod_cores:g} core at {w.target_utilisation:.0%}",
        "partitions: twice the pods (room for the autoscaler to double), at least 6",
    ]


def predict_run(w: Workload, *, consumers: int, replicas: int, partitions: int, inflight_per_consumer: int,
                time_scale: float) -> float:
    """Events/s a scale-bench run should reach: only min(consumers, partitions) consumers get work,
    each keeps ``inflight_per_consumer`` requests busy, spread over the replicas, which run at most
    what :func:`replica_rate` allows (the simulator runs ``time_scale`` times faster than the GPU)."""
    active = min(consumers, partitions)
    offered = active * inflight_per_consumer / replicas
    rate = replica_rate(w, concurrency=offered)
    return replicas * rate.requests_per_s * time_scale / (w.policies if w.mode == "separate" else 1)


def from_bench(bench: dict[str, Any]) -> dict[str, float]:
    """CPU inputs from a ``safeguard bench --json`` result (pipeline, cascade and passthrough modes)."""
    out: dict[str, float] = {}
    try:
        out["cpu_us_per_model_label"] = float(bench["pipeline"]["cpu_us_per_event"])
        if "cascade" in bench:
            out["cpu_us_per_prefilter_label"] = float(bench["cascade"]["cpu_us_per_prefiltered_event"])
        if "passthrough" in bench:
            out["cpu_us_per_cache_label"] = float(bench["passthrough"]["cpu_us_per_event"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a safeguard bench --json result: missing {exc}") from None
    return out
