"""Hardware profiles for the continuous-batching model, calibrated on published figures.

Decode step time grows linearly with the running batch: ``step(n) = step_base_s + step_per_seq_s * n``
(memory-bound decode: weights read once per step, KV reads per sequence). Two anchors fix the line:
single-stream speed (n = 1) and saturated output throughput at ``max_num_seqs``.

gpt-oss-safeguard-20b @ H100 (same architecture as gpt-oss-20b, reference §3.4):
  - saturated: GPUStack, vLLM 0.11.0, ShareGPT burst: 7,817 output tok/s, 9,064 with
    --async-scheduling; we take ~9,000 tok/s at 256 running sequences -> step(256) = 28.4 ms.
  - single stream: ~250 tok/s on an RTX Pro 6000 (Millstone); an H100 is faster, ~300 tok/s
    -> step(1) ~ 3.3 ms.
  - prefill: GPUStack random 2000-in/100-out: 32,114 total tok/s at 15.35 req/s, prefill-dominated
    -> ~30,000 prompt tok/s.
  - KV capacity: 80 GB, ~13 GB weights (MXFP4), 0.9 utilisation, 24 layers x 8 KV heads x 64 dims
    bf16 -> ~48 KiB per token -> ~1.2 M tokens.
gpt-oss-safeguard-120b @ H100:
  - saturated: GPUStack TP1 ShareGPT burst 2,901 output tok/s (2,943 async) -> ~2,950 tok/s at 256.
  - single stream: ~88-90 tok/s on an A100 (vLLM issue #22331); H100 ~150 tok/s -> step(1) ~ 6.7 ms.
  - prefill: GPUStack 120b random 2000/100: 14,386 total tok/s -> ~14,000 prompt tok/s.
  - KV: ~65 GB weights on 80 GB at 0.95 -> ~11 GB for KV at ~72 KiB/token -> ~150 k tokens, which
    binds before 256 sequences for long prompts (the recipe's TP1 OOM warnings agree).

Reasoning length per effort is not published (reference §6, [U]). We use lognormal lengths with
median 240 tokens at low effort (sigma 0.8, so a few requests reason 4-5x longer), 2.5x that at
medium, 6x at high: assumptions, documented as such, and the knobs are here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    max_num_seqs: int
    step_base_s: float
    step_per_seq_s: float
    prefill_tokens_per_s: float
    kv_capacity_tokens: int
    reasoning_median: dict[str, float]
    reasoning_sigma: float = 0.8
    max_model_len: int = 131_072

    def step_time(self, running: int) -> float:
        """Seconds (GPU time) of one decode step with ``running`` sequences in the batch."""
        return self.step_base_s + self.step_per_seq_s * max(running, 1)

    def saturated_output_tps(self) -> float:
        return self.max_num_seqs / self.step_time(self.max_num_seqs)


def _line(single_tps: float, saturated_tps: float, seqs: int) -> tuple[float, float]:
    # The line through step(1) = 1/single_tps and step(seqs) = seqs/saturated_tps.
    per_seq = (seqs / saturated_tps - 1.0 / single_tps) / (seqs - 1)
    return 1.0 / single_tps - per_seq, per_seq


_EFFORT = {"low": 240.0, "medium": 600.0, "high": 1440.0}
_b20, _k20 = _line(300.0, 9_000.0, 256)
_b120, _k120 = _line(150.0, 2_950.0, 256)

PROFILES: dict[str, Profile] = {
    "gpt-oss-safeguard-20b@h100": Profile(
        name="gpt-oss-safeguard-20b@h100",
        model="openai/gpt-oss-safeguard-20b",
        max_num_seqs=256,
        step_base_s=_b20,
        step_per_seq_s=_k20,
        prefill_tokens_per_s=30_000.0,
        kv_capacity_tokens=1_200_000,
        reasoning_median=_EFFORT,
    ),
    "gpt-oss-safeguard-120b@h100": Profile(
        name="gpt-oss-safeguard-120b@h100",
        model="openai/gpt-oss-safeguard-120b",
        max_num_seqs=256,
        step_base_s=_b120,
        step_per_seq_s=_k120,
        prefill_tokens_per_s=14_000.0,
        kv_capacity_tokens=150_000,
        reasoning_median=_EFFORT,
    ),
}
DEFAULT_PROFILE = "gpt-oss-safeguard-20b@h100"
