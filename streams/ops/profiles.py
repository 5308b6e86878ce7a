"""Hardware profiles for the continuous-batching model, calibrated on published figures.

Decode step time for a running batch of ``n`` sequences (memory-bound mixture-of-experts decode):

    step(n) = dense_s + experts_s * (1 - (1 - k/E)^n) + per_seq_s * n

- ``dense_s``: attention/shared weights read once per step, whatever the batch;
- ``experts_s``: reading the expert weights; each token routes to ``k`` of ``E`` experts per layer,
  so a batch of ``n`` touches a fraction ``1 - (1 - k/E)^n`` of them (a single stream reads k/E of
  the experts; by a few dozen sequences every expert is read every step);
- ``per_seq_s``: per-sequence KV-cache reads and compute.
Three anchors fix the three terms: single-stream speed (n = 1), saturated output throughput at
``max_num_seqs``, and the shape of TPOT against concurrency. The only TPOT-vs-concurrency series
we found published (gpt-oss-120b, MI300X, vLLM 0.17, InferenceX PR #1053: TPOT 31 / 37 /
41 / 58 ms at concurrency 64 / 96 / 128 / 256) gives step(64) / step(256) = 0.53; fitting the 120b
profile to that one ratio reproduces the other two points (0.63 vs 0.64 at 96, 0.71 vs 0.71 at 128),
which a straight line through the single-stream point cannot (it gives 0.31 at 64). The 20b profile
takes the same ratio (an assumption: no series is published for it). What this shape matters for:
a batch that drains to a few stragglers still pays most of a full step per token, which is what a
micro-batch barrier costs on a real GPU.

gpt-oss-safeguard-20b @ H100 (same architecture as gpt-oss-20b; 32 experts, top-4):
  - saturated: GPUStack, vLLM 0.11.0, ShareGPT burst: 7,817 output tok/s, 9,064 with
    --async-scheduling; we take ~9,000 tok/s at 256 running sequences -> step(256) = 28.4 ms.
  - single stream: ~250 tok/s on an RTX Pro 6000 (Millstone); an H100 is faster, ~300 tok/s
    -> step(1) ~ 3.3 ms.
  - prefill: GPUStack random 2000-in/100-out: 32,114 total tok/s at 15.35 req/s, prefill-dominated
    -> ~30,000 prompt tok/s.
  - KV capacity: 80 GB, ~13 GB weights (MXFP4), 0.9 utilisation, 24 layers x 8 KV heads x 64 dims
    bf16 -> ~48 KiB per token -> ~1.2 M tokens.
gpt-oss-safeguard-120b @ H100 (128 experts, top-4):
  - saturated: GPUStack TP1 ShareGPT burst 2,901 output tok/s (2,943 async) -> ~2,950 tok/s at 256.
  - single stream: ~88-90 tok/s on an A100 (vLLM issue #22331); H100 ~150 tok/s -> step(1) ~ 6.7 ms.
  - prefill: GPUStack 120b random 2000/100: 14,386 total tok/s -> ~14,000 prompt tok/s.
  - KV: ~65 GB weights on 80 GB at 0.95 -> ~11 GB for KV at ~72 KiB/token -> ~150 k tokens, which
    binds before 256 sequences for long prompts (the recipe's TP1 OOM warnings agree).

Reasoning length per effort is not published. We use lognormal lengths with
median 240 tokens at low effort (sigma 0.8, so a few requests reason 4-5x longer), 2.5x that at
medium, 6x at high: assumptions, documented as such, and the knobs are here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Token accounting shared by the simulator and the capacity model.
HARMONY_OVERHEAD_TOKENS = 64  # system header (identity, dates, effort, channels) and role tokens
CHARS_PER_TOKEN = 4.0  # o200k averages ~4 characters per token on English text
# [U] assumption: a combined request reads the content once and still reasons about each policy:
# 80% of the sum of the per-policy reasoning lengths. The real ratio is not published.
COMBINED_REASONING_SHARE = 0.8


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    max_num_seqs: int
    experts: int
    active_experts: int
    step_dense_s: float
    step_experts_s: float
    step_per_seq_s: float
    prefill_tokens_per_s: float
    kv_capacity_tokens: int
    reasoning_median: dict[str, float]
    reasoning_sigma: float = 0.8
    max_model_len: int = 131_072

    def step_time(self, running: int) -> float:
        """Seconds (GPU time) of one decode step with ``running`` sequences in the batch."""
        n = max(running, 1)
        coverage = 1.0 - (1.0 - self.active_experts / self.experts) ** n
        return self.step_dense_s + self.step_experts_s * coverage + self.step_per_seq_s * n

    def saturated_output_tps(self) -> float:
        return self.max_num_seqs / self.step_time(self.max_num_seqs)


TPOT_RATIO_64_256 = 31.0 / 58.0  # InferenceX MI300X gpt-oss-120b: TPOT at concurrency 64 over 256


def fit_step(single_tps: float, saturated_tps: float, seqs: int, experts: int, active: int,
             ratio_64: float = TPOT_RATIO_64_256) -> tuple[float, float, float]:
    """(dense_s, experts_s, per_seq_s) through step(1) = 1/single_tps, step(seqs) = seqs/saturated_tps
    and step(64) = ratio_64 * step(seqs): three linear equations, solved exactly."""
    def cov(n: int) -> float:
        return 1.0 - (1.0 - active / experts) ** n

    t_sat = seqs / saturated_tps
    rows = [(1.0, cov(1), 1.0, 1.0 / single_tps), (1.0, cov(seqs), float(seqs), t_sat),
            (1.0, cov(64), 64.0, ratio_64 * t_sat)]
    # Gaussian elimination on the 3x4 augmented matrix.
    m = [list(r) for r in rows]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(3):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col], strict=True)]
    dense, exp, per_seq = (m[i][3] / m[i][i] for i in range(3))
    if min(dense, exp, per_seq) < 0:
        raise ValueError("calibration anchors give a negative step component")
    return dense, exp, per_seq


_EFFORT = {"low": 240.0, "medium": 600.0, "high": 1440.0}
_d20, _e20, _k20 = fit_step(300.0, 9_000.0, 256, experts=32, active=4)
_d120, _e120, _k120 = fit_step(150.0, 2_950.0, 256, experts=128, active=4)

PROFILES: dict[str, Profile] = {
    "gpt-oss-safeguard-20b@h100": Profile(
        name="gpt-oss-safeguard-20b@h100",
        model="openai/gpt-oss-safeguard-20b",
        max_num_seqs=256,
        experts=32,
        active_experts=4,
        step_dense_s=_d20,
        step_experts_s=_e20,
        step_per_seq_s=_k20,
        prefill_tokens_per_s=30_000.0,
        kv_capacity_tokens=1_200_000,
        reasoning_median=_EFFORT,
    ),
    "gpt-oss-safeguard-120b@h100": Profile(
        name="gpt-oss-safeguard-120b@h100",
        model="openai/gpt-oss-safeguard-120b",
        max_num_seqs=256,
        experts=128,
        active_experts=4,
        step_dense_s=_d120,
        step_experts_s=_e120,
        step_per_seq_s=_k120,
        prefill_tokens_per_s=14_000.0,
        kv_capacity_tokens=150_000,
        reasoning_median=_EFFORT,
    ),
}
DEFAULT_PROFILE = "gpt-oss-safeguard-20b@h100"
