"""``safeguard serve-replica``: the recommended ``vllm serve`` command for a model and GPU profile.

Flags from the vLLM gpt-oss recipe and the model's guide (docs/operations.md):
``--max-num-seqs`` is what the GPU runs at once (256, as the simulator's profiles; the consumer's
``replicas.max_inflight_per_replica`` sits 1/8 above it so a short queue covers its I/O batching);
``--async-scheduling`` overlaps CPU and GPU work (+16% on 20b in GPUStack's H100 runs); on one H100
the 120b needs ``--gpu-memory-utilization 0.95 --max-num-batched-tokens 1024`` to avoid OOM at TP1.
Prefix caching stays on (default in vLLM V1): every request of a policy shares its prefix.
``k8s/base/vllm.yaml`` uses the same flags for the 20b.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeProfile:
    model: str
    flags: tuple[str, ...]
    gpus: int = 1


SERVE_PROFILES: dict[str, ServeProfile] = {
    "gpt-oss-safeguard-20b@h100": ServeProfile(
        "openai/gpt-oss-safeguard-20b",
        ("--max-num-seqs=256", "--gpu-memory-utilization=0.90", "--async-scheduling"),
    ),
    "gpt-oss-safeguard-120b@h100": ServeProfile(
        "openai/gpt-oss-safeguard-120b",
        ("--max-num-seqs=256", "--gpu-memory-utilization=0.95", "--max-num-batched-tokens=1024",
         "--async-scheduling"),
    ),
    "gpt-oss-safeguard-120b@2xh100": ServeProfile(
        "openai/gpt-oss-safeguard-120b",
        ("--tensor-parallel-size=2", "--max-num-seqs=256", "--gpu-memory-utilization=0.90", "--async-scheduling"),
        gpus=2,
    ),
}


def serve_command(profile: str, *, port: int = 8000, host: str = "0.0.0.0", api_key_env: bool = False,
                  priority: bool = False) -> list[str]:
    """The argv of ``vllm serve`` for a profile; ``priority``: with ``--scheduling-policy priority``
    (vLLM then admits waiting requests by their ``priority``, lower first, never preempting a
    running one for it; with the default fcfs the field is accepted and ignored)."""
    p = SERVE_PROFILES[profile]
    cmd = ["vllm", "serve", p.model, f"--host={host}", f"--port={port}", *p.flags]
    if priority:
        cmd.append("--scheduling-policy=priority")
    if api_key_env:
        cmd.append("--api-key=${VLLM_API_KEY}")
    return cmd
