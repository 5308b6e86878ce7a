"""The capacity model against a small scale-bench run: two consumer processes in one group on two
simulated replicas reach the events/s ``safeguard capacity``'s formula predicts, within 15%."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.bench.runner import _Bench
from streams.devtools.bench.scale import _Group, bench_workload
from streams.ops.capacity import predict_run
from streams.ops.profiles import DEFAULT_PROFILE, PROFILES

PROFILE = PROFILES[DEFAULT_PROFILE]
TIME_SCALE = 4.0
INFLIGHT = PROFILE.max_num_seqs + PROFILE.max_num_seqs // 8


@pytest.mark.timeout(300)
def test_two_consumers_on_two_replicas_run_at_the_predicted_rate(kafka_bootstrap: str, sims, tmp_path: Path) -> None:
    replicas = sims(2, time_scale=TIME_SCALE)
    bench = _Bench(kafka_bootstrap, PROFILE.model, tmp_path, PROFILE.max_num_seqs).using(replicas.urls)
    predicted = predict_run(bench_workload(DEFAULT_PROFILE), consumers=2, replicas=2, partitions=4,
                            inflight_per_consumer=INFLIGHT, time_scale=TIME_SCALE)
    n = int(predicted * 15)

    res = _Group(bench, 2, 4, INFLIGHT).run(n)

    assert res["events"] == n
    assert res["events_per_s"] == pytest.approx(predicted, rel=0.15), res
    assert 0 < res["p50_s"] <= res["p99_s"]
